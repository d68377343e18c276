"""CMMLU as github.com/haonan-li/CMMLU ships it in `data/`: `dev/<subject>.csv` (5 exemplars per subject)
and `test/<subject>.csv` (labelled), 67 subjects; point data_dir at `data/`. Each file is a pandas export
with a header row `,Question,A,B,C,D,Answer`: the first, unnamed column is the row index (the item id
`<subject>-<index>`), the answer a letter. Few-shot exemplars come from `dev/` of the same subject.

`SUBJECTS` holds each subject's Chinese name and category, as the repository's `src/categories.py`
groups them (STEM, Humanities, Social Science, Other — written as metric-friendly names); `CHINA_SPECIFIC`
lists the subjects it also counts under "China specific". The repository averages subjects (macro);
`mc_metrics` reports the micro average over items, and per subject."""
from pathlib import Path

from data.benchmarks.items import MultipleChoiceItem, SubjectFilesReader, check_letter, check_options, read_csv_rows
from data.records import DataError


RELEASE = "github.com/haonan-li/CMMLU ships data/{dev,test}/<subject>.csv: point data_dir at data/"
HEADER = ("", "Question", "A", "B", "C", "D", "Answer")
SUBJECTS = {  # subject -> (name in Chinese, category), from src/categories.py
    "agronomy": ("农学", "other"), "anatomy": ("解剖学", "STEM"), "ancient_chinese": ("古汉语", "social_sciences"),
    "arts": ("艺术学", "humanities"), "astronomy": ("天文学", "STEM"), "business_ethics": ("商业伦理", "social_sciences"),
    "chinese_civil_service_exam": ("中国公务员考试", "social_sciences"), "chinese_driving_rule": ("中国驾驶规则", "other"),
    "chinese_food_culture": ("中国饮食文化", "social_sciences"), "chinese_foreign_policy": ("中国外交政策", "social_sciences"),
    "chinese_history": ("中国历史", "humanities"), "chinese_literature": ("中国文学", "humanities"),
    "chinese_teacher_qualification": ("中国教师资格", "social_sciences"), "clinical_knowledge": ("临床知识", "other"),
    "college_actuarial_science": ("大学精算学", "STEM"), "college_education": ("大学教育学", "social_sciences"),
    "college_engineering_hydrology": ("大学工程水文学", "STEM"), "college_law": ("大学法律", "humanities"),
    "college_mathematics": ("大学数学", "STEM"), "college_medical_statistics": ("大学医学统计", "STEM"),
    "college_medicine": ("大学医学", "other"), "computer_science": ("计算机科学", "STEM"),
    "computer_security": ("计算机安全", "other"), "conceptual_physics": ("概念物理学", "STEM"),
    "construction_project_management": ("建设工程管理", "other"), "economics": ("经济学", "social_sciences"),
    "education": ("教育学", "social_sciences"), "electrical_engineering": ("电气工程", "STEM"),
    "elementary_chinese": ("小学语文", "social_sciences"), "elementary_commonsense": ("小学常识", "other"),
    "elementary_information_and_technology": ("小学信息技术", "other"), "elementary_mathematics": ("初等数学", "STEM"),
    "ethnology": ("民族学", "social_sciences"), "food_science": ("食品科学", "other"), "genetics": ("遗传学", "STEM"),
    "global_facts": ("全球事实", "humanities"), "high_school_biology": ("高中生物", "STEM"),
    "high_school_chemistry": ("高中化学", "STEM"), "high_school_geography": ("高中地理", "social_sciences"),
    "high_school_mathematics": ("高中数学", "STEM"), "high_school_physics": ("高中物理学", "STEM"),
    "high_school_politics": ("高中政治", "social_sciences"), "human_sexuality": ("人类性行为", "other"),
    "international_law": ("国际法学", "humanities"), "journalism": ("新闻学", "social_sciences"),
    "jurisprudence": ("法理学", "humanities"), "legal_and_moral_basis": ("法律与道德基础", "other"),
    "logical": ("逻辑学", "humanities"), "machine_learning": ("机器学习", "STEM"),
    "management": ("管理学", "social_sciences"), "marketing": ("市场营销", "social_sciences"),
    "marxist_theory": ("马克思主义理论", "humanities"), "modern_chinese": ("现代汉语", "social_sciences"),
    "nutrition": ("营养学", "other"), "philosophy": ("哲学", "humanities"),
    "professional_accounting": ("专业会计", "social_sciences"), "professional_law": ("专业法学", "humanities"),
    "professional_medicine": ("专业医学", "other"), "professional_psychology": ("专业心理学", "social_sciences"),
    "public_relations": ("公共关系", "social_sciences"), "security_study": ("安全研究", "social_sciences"),
    "sociology": ("社会学", "social_sciences"), "sports_science": ("体育学", "other"),
    "traditional_chinese_medicine": ("中医中药", "other"), "virology": ("病毒学", "STEM"),
    "world_history": ("世界历史", "humanities"), "world_religions": ("世界宗教", "humanities"),
}
CATEGORIES = {subject: category for subject, (_, category) in SUBJECTS.items()}
CHINA_SPECIFIC = frozenset({
    "ancient_chinese", "chinese_civil_service_exam", "chinese_driving_rule", "chinese_food_culture",
    "chinese_foreign_policy", "chinese_history", "chinese_literature", "chinese_teacher_qualification",
    "construction_project_management", "elementary_chinese", "elementary_commonsense", "ethnology",
    "high_school_politics", "modern_chinese", "traditional_chinese_medicine"})


class CMMLUReader(SubjectFilesReader):
    """CMMLU's `<split>/<subject>.csv` (see SubjectFilesReader for the settings)."""
    benchmark, release, default_categories = "CMMLU", RELEASE, CATEGORIES

    def __init__(self, data_dir: str | Path, split: str = "test", subjects: list[str] | None = None,
                 exemplar_split: str = "dev", categories: dict[str, str] | None = None):
        super().__init__(data_dir, split, subjects, exemplar_split, categories)

    @staticmethod
    def file_name(subject: str, split: str) -> str:
        return f"{subject}.csv"

    def read_file(self, path: Path, subject: str, split: str) -> list[MultipleChoiceItem]:
        return read_subject(path, subject, self.categories.get(subject), SUBJECTS.get(subject, (None,))[0])



def read_subject(path: Path, subject: str, category: str | None, name: str | None) -> list[MultipleChoiceItem]:
    source, items = str(path), []
    rows = read_csv_rows(path)
    line, header = next(rows, (1, []))
    if tuple(field.strip() for field in header) != HEADER:
        raise DataError(source, line, f"expected the CMMLU header {','.join(HEADER)!r}, got {','.join(header)!r}")
    for line, row in rows:
        if len(row) != len(HEADER):
            raise DataError(source, line, f"expected {len(HEADER)} fields (index, Question, A, B, C, D, Answer), "
                                          f"got {len(row)}")
        items.append(MultipleChoiceItem(
            id=f"{subject}-{row[0].strip()}", passage="", question=row[1],
            options=check_options(row[2:6], source, line), gold=check_letter(row[6], source, line, "Answer"),
            source=source, position=f"line {line}", subject=subject, category=category, subject_name=name))
    if not items:
        raise DataError(source, None, "no questions below the header")
    return items
