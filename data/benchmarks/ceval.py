"""C-Eval as its authors release it (`ceval-exam.zip` from huggingface.co/datasets/ceval/ceval-exam, linked
from github.com/hkust-nlp/ceval): `dev/`, `val/`, `test/` holding `<subject>_<split>.csv` for 52 subjects;
point data_dir at the unzipped folder. CSV with a header row: `id,question,A,B,C,D,answer,explanation` in
dev/ (5 exemplars per subject, with explanations), `id,question,A,B,C,D,answer` in val/ (1346 labelled
questions), `id,question,A,B,C,D` in test/ (labels withheld). Items are `<subject>-<id>`.

The test split is only predicted (gold None); its leaderboard takes one UTF-8 JSON file
`{subject: {id: letter}}` (the repository's submission_example.json), which `write_submission` writes.
`SUBJECTS` holds each subject's Chinese name and category from the repository's subject_mapping.json
(STEM, Social Science, Humanities, Other — written as metric-friendly names)."""
import json
import logging
from pathlib import Path

from data.benchmarks.items import LETTERS, MultipleChoiceItem, SubjectFilesReader, check_options, read_csv_rows
from data.records import DataError
from general_util.errors import ConfigError

logger = logging.getLogger(__name__)

RELEASE = "ceval-exam.zip (huggingface.co/datasets/ceval/ceval-exam) holds {dev,val,test}/<subject>_<split>.csv"
COLUMNS = ("id", "question", "A", "B", "C", "D")  # then answer (not in test/) and explanation (dev/ only)
UNLABELLED_SPLITS = ("test",)
SUBMISSION = "ceval_submission.json"
SUBJECTS = {  # subject -> (name in Chinese, category), from subject_mapping.json
    "computer_network": ("计算机网络", "STEM"), "operating_system": ("操作系统", "STEM"),
    "computer_architecture": ("计算机组成", "STEM"), "college_programming": ("大学编程", "STEM"),
    "college_physics": ("大学物理", "STEM"), "college_chemistry": ("大学化学", "STEM"),
    "advanced_mathematics": ("高等数学", "STEM"), "probability_and_statistics": ("概率统计", "STEM"),
    "discrete_mathematics": ("离散数学", "STEM"), "electrical_engineer": ("注册电气工程师", "STEM"),
    "metrology_engineer": ("注册计量师", "STEM"), "high_school_mathematics": ("高中数学", "STEM"),
    "high_school_physics": ("高中物理", "STEM"), "high_school_chemistry": ("高中化学", "STEM"),
    "high_school_biology": ("高中生物", "STEM"), "middle_school_mathematics": ("初中数学", "STEM"),
    "middle_school_biology": ("初中生物", "STEM"), "middle_school_physics": ("初中物理", "STEM"),
    "middle_school_chemistry": ("初中化学", "STEM"), "veterinary_medicine": ("兽医学", "STEM"),
    "college_economics": ("大学经济学", "social_sciences"), "business_administration": ("工商管理", "social_sciences"),
    "marxism": ("马克思主义基本原理", "social_sciences"), "mao_zedong_thought": ("毛泽东思想和中国特色社会主义理论体系概论", "social_sciences"),
    "education_science": ("教育学", "social_sciences"), "teacher_qualification": ("教师资格", "social_sciences"),
    "high_school_politics": ("高中政治", "social_sciences"), "high_school_geography": ("高中地理", "social_sciences"),
    "middle_school_politics": ("初中政治", "social_sciences"), "middle_school_geography": ("初中地理", "social_sciences"),
    "modern_chinese_history": ("近代史纲要", "humanities"),
    "ideological_and_moral_cultivation": ("思想道德修养与法律基础", "humanities"), "logic": ("逻辑学", "humanities"),
    "law": ("法学", "humanities"), "chinese_language_and_literature": ("中国语言文学", "humanities"),
    "art_studies": ("艺术学", "humanities"), "professional_tour_guide": ("导游资格", "humanities"),
    "legal_professional": ("法律职业资格", "humanities"), "high_school_chinese": ("高中语文", "humanities"),
    "high_school_history": ("高中历史", "humanities"), "middle_school_history": ("初中历史", "humanities"),
    "civil_servant": ("公务员", "other"), "sports_science": ("体育学", "other"), "plant_protection": ("植物保护", "other"),
    "basic_medicine": ("基础医学", "other"), "clinical_medicine": ("临床医学", "other"),
    "urban_and_rural_planner": ("注册城乡规划师", "other"), "accountant": ("注册会计师", "other"),
    "fire_engineer": ("注册消防工程师", "other"), "environmental_impact_assessment_engineer": ("环境影响评价工程师", "other"),
    "tax_accountant": ("税务师", "other"), "physician": ("医师资格", "other"),
}
CATEGORIES = {subject: category for subject, (_, category) in SUBJECTS.items()}


class CEvalReader(SubjectFilesReader):
    """C-Eval's `<split>/<subject>_<split>.csv` (see SubjectFilesReader for the settings); test/ has no answers."""
    benchmark, release, default_categories = "C-Eval", RELEASE, CATEGORIES

    def __init__(self, data_dir: str | Path, split: str = "val", subjects: list[str] | None = None,
                 exemplar_split: str = "dev", categories: dict[str, str] | None = None):
        if exemplar_split in UNLABELLED_SPLITS:
            raise ConfigError(f"C-Eval exemplar_split={exemplar_split!r} has no labels; use dev or val")
        super().__init__(data_dir, split, subjects, exemplar_split, categories)

    def read_file(self, path: Path, subject: str, split: str) -> list[MultipleChoiceItem]:
        return read_subject(path, subject, self.categories.get(subject), SUBJECTS.get(subject, (None,))[0],
                            labelled=split not in UNLABELLED_SPLITS)

    @staticmethod
    def write_submission(output_dir: str | Path, predictions: list[dict]) -> Path:
        return write_submission(output_dir, predictions)



def read_subject(path: Path, subject: str, category: str | None, name: str | None,
                 labelled: bool) -> list[MultipleChoiceItem]:
    source, items = str(path), []
    rows = read_csv_rows(path)
    line, header = next(rows, (1, []))
    header = [field.strip() for field in header]
    expected = ",".join(COLUMNS + (("answer",) if labelled else ()))
    if tuple(header[:len(COLUMNS)]) != COLUMNS or (labelled and "answer" not in header):
        raise DataError(source, line, f"expected a C-Eval header starting {expected!r}, got {','.join(header)!r}"
                                      f"{'' if labelled else ' (test/ may leave out answer)'}")
    answer_at = header.index("answer") if "answer" in header else None
    ids = set()
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(source, line, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        answer = row[answer_at].strip() if answer_at is not None else ""
        if (answer and answer not in LETTERS) or (labelled and not answer):
            raise DataError(source, line, f"answer must be one of {', '.join(LETTERS)}, got {answer!r}")
        row_id = row[0].strip()
        if row_id in ids:
            raise DataError(source, line, f"duplicate id {row_id!r}")
        ids.add(row_id)
        items.append(MultipleChoiceItem(
            id=f"{subject}-{row_id}", passage="", question=row[1], options=check_options(row[2:6], source, line),
            gold=LETTERS.index(answer) if answer else None, source=source, position=f"line {line}",
            subject=subject, category=category, subject_name=name))
    if not items:
        raise DataError(source, None, "no questions below the header")
    return items


def submission(predictions: list[dict]) -> dict[str, dict[str, str]]:
    """The leaderboard's `{subject: {id: letter}}` from prediction records (`id` `<subject>-<id>`,
    `subject`, `prediction` an option index or None where a generated answer was unparsable: "")."""
    answers: dict[str, dict[str, str]] = {}
    for p in predictions:
        subject = p["subject"]
        answers.setdefault(subject, {})[p["id"][len(subject) + 1:]] = \
            "" if p["prediction"] is None else LETTERS[p["prediction"]]
    return answers


def write_submission(output_dir: str | Path, predictions: list[dict]) -> Path:
    """`<output_dir>/ceval_submission.json`, UTF-8, to upload at cevalbenchmark.com."""
    path = Path(output_dir) / SUBMISSION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission(predictions), ensure_ascii=False, indent=4) + "\n", encoding="utf-8")
    unparsable = sum(p["prediction"] is None for p in predictions)
    if unparsable:
        logger.warning("%s: %d unparsable answers submitted as \"\"", path, unparsable)
    return path
