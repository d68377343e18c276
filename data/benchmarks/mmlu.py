"""MMLU as its authors release it (github.com/hendrycks/test links data.tar): `data/{dev,val,test}/
<subject>_<split>.csv`, one header-less CSV per subject and split, rows `question, A, B, C, D, answer
letter`; point data_dir at `data/`. Few-shot exemplars come from `dev/` (5 per subject) of the same subject.

`CATEGORIES` maps all 57 subjects to the four categories of the MMLU paper, as the repository's
`categories.py` groups them (STEM, humanities, social sciences, other), written as metric-friendly names.
A subject missing from the table (pass `categories=` to change it) is still scored, per subject and
overall. Copies that add a header row and number the answers (`question,choice0,…,answer`, as some
exports of the Hugging Face `cais/mmlu` do) are reported at line 1, naming the expected layout."""
from pathlib import Path

from data.benchmarks.items import MultipleChoiceItem, SubjectFilesReader, check_letter, check_options, read_csv_rows
from data.records import DataError


RELEASE = "the MMLU release (data.tar, linked from github.com/hendrycks/test) holds data/{dev,val,test}/<subject>_<split>.csv"
LAYOUT = "rows question,A,B,C,D,<answer letter> without a header"
CATEGORIES = {  # hendrycks/test categories.py: subject -> subcategory -> category
    "abstract_algebra": "STEM", "anatomy": "other", "astronomy": "STEM", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "STEM", "college_chemistry": "STEM",
    "college_computer_science": "STEM", "college_mathematics": "STEM", "college_medicine": "other",
    "college_physics": "STEM", "computer_security": "STEM", "conceptual_physics": "STEM",
    "econometrics": "social_sciences", "electrical_engineering": "STEM", "elementary_mathematics": "STEM",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "STEM",
    "high_school_chemistry": "STEM", "high_school_computer_science": "STEM",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "STEM", "high_school_microeconomics": "social_sciences",
    "high_school_physics": "STEM", "high_school_psychology": "social_sciences", "high_school_statistics": "STEM",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "STEM", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}


class MMLUReader(SubjectFilesReader):
    """MMLU's `<split>/<subject>_<split>.csv` (see SubjectFilesReader for the settings)."""
    benchmark, release, default_categories = "MMLU", RELEASE, CATEGORIES

    def __init__(self, data_dir: str | Path, split: str = "test", subjects: list[str] | None = None,
                 exemplar_split: str = "dev", categories: dict[str, str] | None = None):
        super().__init__(data_dir, split, subjects, exemplar_split, categories)

    def read_file(self, path: Path, subject: str, split: str) -> list[MultipleChoiceItem]:
        return read_subject(path, subject, self.categories.get(subject))



def read_subject(path: Path, subject: str, category: str | None) -> list[MultipleChoiceItem]:
    source, items = str(path), []
    for line, row in read_csv_rows(path):
        if line == 1 and row[-1].strip().lower() == "answer":
            raise DataError(source, line, f"a header row ({','.join(row)}); the MMLU release has {LAYOUT}")
        if len(row) != 6:
            raise DataError(source, line, f"expected 6 fields (question, A, B, C, D, answer), got {len(row)}")
        items.append(MultipleChoiceItem(
            id=f"{path.stem}-{len(items)}", passage="", question=row[0],
            options=check_options(row[1:5], source, line), gold=check_letter(row[5], source, line), source=source,
            position=f"line {line}", subject=subject, category=category))
    return items
