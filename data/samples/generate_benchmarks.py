"""Regenerate the bundled multiple-choice benchmark samples (deterministic).

Synthetic questions in each benchmark's released layout (file names, fields, label encoding, line ends),
small enough for tests and CPU demos; each folder stands for the one a reader's data_dir names:

    logiqa_v2/{train,dev,test}.txt              LogiQA 2.0 English (logiqa/DATA/LOGIQA): JSON lines with id,
                                                answer, text, question, options, type; no newline at the end
    logiqa_v2/{train,dev,test}_zh.txt           LogiQA 2.0 Chinese: example_id instead of id, no type; some
                                                options lettered "A." as in the release
    c3/c3-{d,m}-{train,dev,test}.json           C3 (data/): [[context lines], [questions], id] documents
    reclor/{train,val,test}.json                ReClor (reclor_data.zip): a JSON list; test has no labels
    mmlu/{dev,val,test}/<subject>_<split>.csv   MMLU (data.tar's data/): header-less CSV, answer letter last
    cmmlu/{dev,test}/<subject>.csv              CMMLU (data/): header ",Question,A,B,C,D,Answer", index first
    ceval/{dev,val,test}/<subject>_<split>.csv  C-Eval (ceval-exam.zip): header id,question,A,B,C,D then
                                                answer,explanation (dev), answer (val), nothing (test)

    python -m data.samples.generate_benchmarks

The samples that existed before CMMLU and C-Eval keep their questions: new content draws on its own seed.
"""
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).parent

NAMES_ZH = ["小明", "小红", "老王", "张老师", "李医生", "小刚", "王经理", "陈同学"]
GROUPS_ZH = [("学生", "读书"), ("厨师", "做饭"), ("画家", "画画"), ("农民", "种地"), ("司机", "开车"), ("歌手", "唱歌")]
NAMES_EN = ["Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Henry"]
GROUPS_EN = [("students", "reading"), ("cooks", "cooking"), ("painters", "painting"), ("farmers", "gardening"),
             ("drivers", "travelling"), ("singers", "music")]


def shuffled_options(rng: random.Random, correct: str, wrong: list[str]) -> tuple[list[str], int]:
    options = [correct] + wrong
    rng.shuffle(options)
    return options, options.index(correct)


def logiqa_item(rng: random.Random, language: str, item_id: int) -> dict:
    names, groups = (NAMES_ZH, GROUPS_ZH) if language == "zh" else (NAMES_EN, GROUPS_EN)
    a, b, c = rng.sample(names, 3)
    group, hobby = rng.choice(groups)
    if rng.random() < 0.5:  # syllogism
        if language == "zh":
            text = f"所有的{group}都喜欢{hobby}。{a}是{group}。"
            question = "根据以上陈述，可以得出以下哪项？"
            correct = f"{a}喜欢{hobby}。"
            wrong = [f"{a}不喜欢{hobby}。", f"所有喜欢{hobby}的人都是{group}。", f"{b}是{group}。"]
        else:
            text = f"All {group} enjoy {hobby}. {a} is one of the {group}."
            question = "Which of the following follows from the statements above?"
            correct = f"{a} enjoys {hobby}."
            wrong = [f"{a} does not enjoy {hobby}.", f"Everyone who enjoys {hobby} is one of the {group}.",
                     f"{b} is one of the {group}."]
    else:  # ordering
        if language == "zh":
            text = f"{a}比{b}高，{b}比{c}高。"
            question = "如果以上陈述为真，谁最矮？"
            correct, wrong = c, [a, b, "无法确定"]
        else:
            text = f"{a} is taller than {b}, and {b} is taller than {c}."
            question = "If the statements above are true, who is the shortest?"
            correct, wrong = c, [a, b, "It cannot be determined"]
    options, answer = shuffled_options(rng, correct, wrong)
    if language == "zh":  # the release's Chinese records: example_id, no type
        return {"example_id": item_id, "answer": answer, "text": text, "question": question, "options": options}
    kind = "Categorical Reasoning" if text.startswith("All ") else "Conjunctive Reasoning"
    return {"id": item_id, "answer": answer, "text": text, "question": question, "options": options,
            "type": {kind: True}}


C3_DIALOGUES = [
    (["男：你今天怎么来得这么早？", "女：我坐地铁来的，路上一点儿也不堵。"], "女的今天是怎么来的？", "坐地铁", ["坐地铁", "开车", "走路"]),
    (["女：这件衣服多少钱？", "男：一百二十块，打八折。"], "这件衣服打几折？", "八折", ["八折", "九折"]),
    (["男：明天的会议改到几点了？", "女：下午三点，在二楼会议室。"], "会议在哪儿开？", "二楼会议室", ["一楼大厅", "二楼会议室", "三楼办公室", "楼下咖啡馆"]),
    (["女：你周末打算做什么？", "男：我想去爬山，你要一起去吗？"], "男的周末想做什么？", "爬山", ["看电影", "爬山", "游泳"]),
    (["男：这道菜太咸了。", "女：对不起，我马上给您换一份。"], "他们最可能在哪儿？", "饭馆", ["饭馆", "医院", "学校", "银行"]),
    (["女：你的感冒好点儿了吗？", "男：好多了，昨天去医院开了药。"], "男的昨天去了哪儿？", "医院", ["商店", "医院"]),
    (["男：请问去火车站怎么走？", "女：一直往前走，到路口往左拐。"], "到路口应该怎么走？", "往左拐", ["往右拐", "往左拐", "往回走"]),
    (["女：你喝咖啡还是喝茶？", "男：晚上喝咖啡睡不着，给我一杯茶吧。"], "男的要喝什么？", "茶", ["咖啡", "茶", "果汁"]),
    (["男：你的新工作怎么样？", "女：同事都很好，就是离家太远了。"], "女的觉得新工作哪里不好？", "离家太远", ["同事不好", "离家太远", "工资太低", "太累了"]),
    (["女：图书馆几点关门？", "男：晚上十点，周末早一个小时。"], "周末图书馆几点关门？", "九点", ["九点", "十点", "十一点"]),
]
C3_MIXED = [
    (["春天来了，公园里的花都开了。很多人周末带着孩子去公园散步、拍照。"], ["公园里的花怎么样了？", "人们周末去公园做什么？"],
     ["开了", "散步、拍照"], [["开了", "谢了", "还没开"], ["散步、拍照", "游泳", "买菜", "上课"]]),
    (["小王每天早上六点起床，先跑步半个小时，然后吃早饭，七点半出门上班。"], ["小王几点起床？", "小王跑步跑多长时间？"],
     ["六点", "半个小时"], [["六点", "七点", "七点半"], ["十分钟", "半个小时", "一个小时", "两个小时"]]),
    (["这家书店开了二十年了。老板说，虽然现在很多人在网上买书，但他还是愿意把书店开下去。"], ["这家书店开了多少年？"],
     ["二十年"], [["十年", "二十年"]]),
    (["王老师: 同学们，明天我们去博物馆参观，早上八点在学校门口集合。"], ["明天在哪儿集合？", "明天去哪儿参观？"],
     ["学校门口", "博物馆"], [["学校门口", "博物馆门口", "教室"], ["动物园", "博物馆", "图书馆", "科技馆"]]),
    (["天气预报说，明天有大雨，气温会下降五度，出门要带伞。"], ["明天天气怎么样？"], ["有大雨"], [["晴天", "有大雨", "下雪"]]),
    (["女：你的自行车修好了吗？", "男：修好了，花了五十块。", "女：不贵，下次我的车坏了也去那儿修。"],
     ["修自行车花了多少钱？", "女的觉得价格怎么样？"], ["五十块", "不贵"], [["五块", "五十块", "五百块"], ["太贵", "不贵"]]),
]

RECLOR_ARGUMENTS = [
    ("Every library in the city extended its opening hours last year. Visits to the libraries rose by a third.",
     "Which one of the following, if true, most weakens the argument that longer hours caused the rise in visits?",
     "A new school opened next to each library last year.", ["The libraries bought more books.",
     "Some visitors came in the morning.", "Library staff were paid more."]),
    ("Towns that planted more trees reported cooler summers. Therefore planting trees cools a town.",
     "The argument is most vulnerable to criticism on the grounds that it",
     "confuses a correlation with a cause.", ["relies on an expert's opinion.", "uses a term in two senses.",
     "ignores the cost of trees."]),
    ("The bakery's sales doubled after it started selling coffee. The owner concludes that coffee drives sales.",
     "Which one of the following is an assumption required by the owner's conclusion?",
     "Nothing else that could have raised sales changed at the same time.", ["Coffee is cheaper than bread.",
     "Most customers dislike tea.", "The bakery opens early."]),
    ("Students who sleep eight hours score higher on tests. So schools should start later.",
     "Which one of the following, if true, most strengthens the argument?",
     "Students at schools that start later sleep longer.", ["Some students nap at lunch.",
     "Tests are harder in the morning for teachers.", "School buses are expensive."]),
    ("All members of the chess club play on Fridays. Maria does not play on Fridays.",
     "Which one of the following must be true?", "Maria is not a member of the chess club.",
     ["Maria plays on Saturdays.", "Maria dislikes chess.", "The chess club meets only on Fridays."]),
    ("A factory cut its energy use by installing new windows. Its neighbour plans to do the same.",
     "The neighbour's plan assumes that", "its energy use is affected by its windows in a similar way.",
     ["windows are cheap.", "the factory is larger.", "energy prices will fall."]),
]

MMLU_SUBJECTS = {
    "abstract_algebra": [(f"How many elements does the cyclic group Z_{n} have?", str(n), [str(n + 1), str(2 * n), str(n - 1)])
                         for n in range(3, 16)],
    "high_school_geography": [(f"What is the capital of {country}?", city, others) for country, city, others in [
        ("France", "Paris", ["Lyon", "Marseille", "Nice"]), ("Japan", "Tokyo", ["Osaka", "Kyoto", "Nagoya"]),
        ("Italy", "Rome", ["Milan", "Naples", "Turin"]), ("Egypt", "Cairo", ["Alexandria", "Giza", "Luxor"]),
        ("Canada", "Ottawa", ["Toronto", "Vancouver", "Montreal"]), ("Australia", "Canberra", ["Sydney", "Melbourne", "Perth"]),
        ("Brazil", "Brasilia", ["Rio de Janeiro", "Sao Paulo", "Salvador"]), ("Germany", "Berlin", ["Munich", "Hamburg", "Cologne"]),
        ("Spain", "Madrid", ["Barcelona", "Seville", "Valencia"]), ("Kenya", "Nairobi", ["Mombasa", "Kisumu", "Nakuru"]),
        ("India", "New Delhi", ["Mumbai", "Chennai", "Kolkata"]), ("Peru", "Lima", ["Cusco", "Arequipa", "Trujillo"]),
        ("Norway", "Oslo", ["Bergen", "Trondheim", "Stavanger"])]],
    "nutrition": [(f"Which food is the best source of {nutrient}?", food, others) for nutrient, food, others in [
        ("vitamin C", "oranges", ["white rice", "butter", "sugar"]), ("protein", "lentils", ["apples", "olive oil", "lettuce"]),
        ("calcium", "milk", ["rice", "cucumber", "honey"]), ("iron", "spinach", ["cream", "white bread", "grapes"]),
        ("fibre", "oats", ["cheese", "eggs", "soda"]), ("vitamin D", "salmon", ["carrots", "rice", "apples"]),
        ("potassium", "bananas", ["butter", "sugar", "salt"]), ("omega-3 fats", "sardines", ["potatoes", "pasta", "jam"]),
        ("vitamin A", "carrots", ["white bread", "sugar", "vinegar"]), ("carbohydrate", "bread", ["oil", "salt", "water"]),
        ("vitamin B12", "eggs", ["apples", "rice", "cucumber"]), ("zinc", "oysters", ["lettuce", "sugar", "tea"]),
        ("magnesium", "almonds", ["water", "butter", "sugar"])]],
    "philosophy": [(f"Who wrote '{work}'?", author, others) for work, author, others in [
        ("The Republic", "Plato", ["Hume", "Kant", "Locke"]), ("Critique of Pure Reason", "Kant", ["Plato", "Hegel", "Mill"]),
        ("Meditations on First Philosophy", "Descartes", ["Hume", "Spinoza", "Aristotle"]),
        ("Leviathan", "Hobbes", ["Rousseau", "Locke", "Kant"]), ("Utilitarianism", "Mill", ["Bentham", "Hume", "Plato"]),
        ("Ethics", "Spinoza", ["Leibniz", "Berkeley", "Hobbes"]), ("Nicomachean Ethics", "Aristotle", ["Plato", "Socrates", "Kant"]),
        ("A Treatise of Human Nature", "Hume", ["Locke", "Descartes", "Mill"]), ("The Social Contract", "Rousseau", ["Hobbes", "Locke", "Voltaire"]),
        ("Thus Spoke Zarathustra", "Nietzsche", ["Kant", "Hegel", "Marx"]), ("Being and Time", "Heidegger", ["Husserl", "Sartre", "Kant"]),
        ("Phenomenology of Spirit", "Hegel", ["Kant", "Fichte", "Hume"]), ("An Essay Concerning Human Understanding", "Locke", ["Hume", "Berkeley", "Kant"])]],
}
MMLU_SPLIT_SIZES = {"dev": 5, "val": 3, "test": 5}

# CMMLU and C-Eval: Chinese questions made from small fact tables (their own random seed)
PROVINCES = [("浙江", "杭州"), ("江苏", "南京"), ("广东", "广州"), ("四川", "成都"), ("湖北", "武汉"), ("湖南", "长沙"),
             ("河南", "郑州"), ("河北", "石家庄"), ("山东", "济南"), ("山西", "太原"), ("陕西", "西安"), ("福建", "福州"),
             ("江西", "南昌"), ("安徽", "合肥"), ("云南", "昆明"), ("贵州", "贵阳"), ("辽宁", "沈阳"), ("吉林", "长春")]
DYNASTIES = ["夏", "商", "周", "秦", "汉", "隋", "唐", "宋", "元", "明", "清"]  # in order
HEALTH = [
    ("坏血病是由于缺乏____引起的。", "维生素C", ["维生素A", "维生素D", "维生素K"]),
    ("夜盲症通常与缺乏____有关。", "维生素A", ["维生素C", "维生素B12", "维生素E"]),
    ("佝偻病主要是由于缺乏____引起的。", "维生素D", ["维生素C", "维生素B1", "维生素A"]),
    ("脚气病是由于缺乏____引起的。", "维生素B1", ["维生素C", "维生素D", "维生素K"]),
    ("缺铁最容易导致____。", "贫血", ["夜盲症", "佝偻病", "坏血病"]),
    ("地方性甲状腺肿大主要是由于缺乏____。", "碘", ["钙", "铁", "锌"]),
    ("人体内含量最多的矿物质是____。", "钙", ["铁", "锌", "碘"]),
    ("正常成年人的腋下体温约为____。", "37°C", ["35°C", "39°C", "41°C"]),
    ("人体最大的器官是____。", "皮肤", ["肝脏", "肺", "心脏"]),
    ("血液中运输氧气的主要是____。", "红细胞", ["白细胞", "血小板", "血浆"]),
    ("胰岛素由____分泌。", "胰腺", ["肝脏", "肾脏", "胃"]),
    ("正常成年人安静时的心率一般为每分钟____。", "60～100次", ["20～40次", "120～160次", "180～200次"]),
]


def geography_questions(rng: random.Random, count: int) -> list[tuple[str, str, list[str], str]]:
    """(question, right, wrong, explanation)."""
    out = []
    for province, capital in rng.sample(PROVINCES, count):
        wrong = rng.sample([c for _, c in PROVINCES if c != capital], 3)
        out.append((f"{province}省的省会是____。", capital, wrong, f"1. {province}省的省会城市是{capital}。\n2. 其余选项是其他省份的省会。"))
    return out


def history_questions(rng: random.Random, count: int) -> list[tuple[str, str, list[str], str]]:
    out = []
    for k in range(count):
        chosen = sorted(rng.sample(range(len(DYNASTIES)), 4))
        pick = chosen[0] if k % 2 == 0 else chosen[-1]
        word = "最早" if k % 2 == 0 else "最晚"
        names = [DYNASTIES[i] + "朝" for i in chosen]
        out.append((f"下列朝代中，{word}出现的是____。", DYNASTIES[pick] + "朝", [n for n in names if n != DYNASTIES[pick] + "朝"],
                    f"1. 按时间顺序排列为{'、'.join(names)}。\n2. 所以{word}的是{DYNASTIES[pick]}朝。"))
    return out


def arithmetic_questions(rng: random.Random, count: int, kind: str) -> list[tuple[str, str, list[str], str]]:
    out = []
    for _ in range(count):
        a, b = rng.randint(2, 19), rng.randint(2, 19)
        if kind == "product":
            question, right = f"计算：{a}×{b}=____。", a * b
        else:  # a linear equation a·x + b = c with integer x
            x = rng.randint(1, 9)
            question, right = f"方程 {a}x+{b}={a * x + b} 的解是 x=____。", x
        wrong = [right + 1, right - 1, right + 10]
        out.append((question, str(right), [str(w) for w in wrong], f"1. 直接计算可得{right}。\n2. 故选对应选项。"))
    return out


def health_questions(rng: random.Random, count: int) -> list[tuple[str, str, list[str], str]]:
    return [(q, right, wrong, f"1. {q.replace('____', right)}") for q, right, wrong in rng.sample(HEALTH, count)]


CMMLU_SUBJECTS = {"chinese_history": history_questions, "elementary_mathematics": "product",
                  "high_school_geography": geography_questions, "nutrition": health_questions}
CMMLU_SPLIT_SIZES = {"dev": 5, "test": 6}
CEVAL_SUBJECTS = {"basic_medicine": health_questions, "high_school_geography": geography_questions,
                  "high_school_history": history_questions, "middle_school_mathematics": "equation"}
CEVAL_SPLIT_SIZES = {"dev": 5, "val": 4, "test": 3}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """JSON lines as LogiQA 2.0 writes them: no newline after the last one."""
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), encoding="utf-8")


def write_json(path: Path, value, final_newline: bool = True) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + ("\n" if final_newline else ""), encoding="utf-8")


def write_csv(path: Path, rows: list[list]) -> None:
    """As pandas' to_csv writes them: "\n" line ends, quotes only where needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def lettered(options: list[str]) -> list[str]:
    """Options as about 60% of LogiQA 2.0's Chinese records carry them: "A.…", "B.…" (or "A．…")."""
    return [f"{letter}{'.' if n % 2 else '．'}{option}" for n, (letter, option) in enumerate(zip("ABCD", options))]


def write_logiqa(rng: random.Random, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for language in ("zh", "en"):
        next_id = 0
        for split, count in (("train", 12), ("dev", 15), ("test", 11)):
            rows = [logiqa_item(rng, language, next_id + i) for i in range(count)]
            next_id += count
            if language == "zh":
                for row in rows[::2]:
                    row["options"] = lettered(row["options"])
                write_jsonl(folder / f"{split}_zh.txt", rows)
            else:
                if split == "test":  # the English release repeats a few ids for different questions
                    rows[7]["id"] = rows[3]["id"]
                write_jsonl(folder / f"{split}.txt", rows)


def write_c3(rng: random.Random, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dialogue = []
    for i, (lines, question, answer, choices) in enumerate(C3_DIALOGUES):
        choices = rng.sample(choices, len(choices))
        dialogue.append([lines, [{"question": question, "choice": choices, "answer": answer}], f"d{i + 1}-1"])
    # one document with two questions, as in the real dialogue files
    dialogue[0][1].append({"question": "男的说了什么？", "choice": ["你今天来得很早", "你今天来晚了"], "answer": "你今天来得很早"})
    mixed = []
    for i, (lines, questions, answers, choice_lists) in enumerate(C3_MIXED):
        mixed.append([lines, [{"question": q, "choice": rng.sample(c, len(c)), "answer": a}
                              for q, a, c in zip(questions, answers, choice_lists)], f"m{i + 1}-1"])
    write_json(folder / "c3-d-dev.json", dialogue, final_newline=False)
    write_json(folder / "c3-m-dev.json", mixed, final_newline=False)


def write_c3_train_test(rng: random.Random, folder: Path) -> None:
    """train and test: the dev texts again, choices in another order, under ids of their own."""
    for subset, name in (("d", "c3-d-dev.json"), ("m", "c3-m-dev.json")):
        documents = json.loads((folder / name).read_text(encoding="utf-8"))
        for split, (start, stop) in (("train", (0, len(documents) // 2)), ("test", (len(documents) // 2, len(documents)))):
            copies = [[lines, [{**q, "choice": rng.sample(q["choice"], len(q["choice"]))} for q in questions],
                       f"{subset}{split}{i + 1}-1"] for i, (lines, questions, _) in enumerate(documents[start:stop])]
            write_json(folder / f"c3-{subset}-{split}.json", copies, final_newline=False)


def write_reclor(rng: random.Random, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    variants = RECLOR_ARGUMENTS * 5  # the same arguments with their answers in another order
    rng.shuffle(variants)
    for split, (start, stop) in (("train", (0, 10)), ("val", (10, 21)), ("test", (21, 30))):
        rows = []
        for i, (context, question, correct, wrong) in enumerate(variants[start:stop]):
            answers, label = shuffled_options(rng, correct, list(wrong))
            row = {"context": context, "question": question, "answers": answers, "label": label,
                   "id_string": f"{split}_{i}"}
            if split == "test":
                del row["label"]
            rows.append(row)
        write_json(folder / f"{split}.json", rows)


def write_mmlu(rng: random.Random, folder: Path) -> None:
    for subject, questions in MMLU_SUBJECTS.items():
        questions = list(questions)
        start = 0
        for split, count in MMLU_SPLIT_SIZES.items():
            (folder / split).mkdir(parents=True, exist_ok=True)
            rows = []
            for question, correct, wrong in questions[start:start + count]:
                options, answer = shuffled_options(rng, correct, list(wrong))
                rows.append([question, *options, "ABCD"[answer]])
            write_csv(folder / split / f"{subject}_{split}.csv", rows)
            start += count


def subject_questions(rng: random.Random, make, count: int) -> list[tuple[str, str, list[str], str]]:
    return arithmetic_questions(rng, count, make) if isinstance(make, str) else make(rng, count)


def write_cmmlu(rng: random.Random, folder: Path) -> None:
    for subject, make in CMMLU_SUBJECTS.items():
        questions = subject_questions(rng, make, sum(CMMLU_SPLIT_SIZES.values()))
        start = 0
        for split, count in CMMLU_SPLIT_SIZES.items():
            rows = [["", "Question", "A", "B", "C", "D", "Answer"]]
            for index, (question, correct, wrong, _) in enumerate(questions[start:start + count]):
                options, answer = shuffled_options(rng, correct, wrong)
                rows.append([index, question, *options, "ABCD"[answer]])
            write_csv(folder / split / f"{subject}.csv", rows)
            start += count


def write_ceval(rng: random.Random, folder: Path) -> None:
    columns = {"dev": ["answer", "explanation"], "val": ["answer"], "test": []}
    for subject, make in CEVAL_SUBJECTS.items():
        questions = subject_questions(rng, make, sum(CEVAL_SPLIT_SIZES.values()))
        start = 0
        for split, count in CEVAL_SPLIT_SIZES.items():
            rows = [["id", "question", "A", "B", "C", "D", *columns[split]]]
            for index, (question, correct, wrong, explanation) in enumerate(questions[start:start + count]):
                options, answer = shuffled_options(rng, correct, wrong)
                rows.append([index, question, *options, *[{"answer": "ABCD"[answer], "explanation": explanation}[c]
                                                          for c in columns[split]]])
            write_csv(folder / split / f"{subject}_{split}.csv", rows)
            start += count


def main() -> None:
    rng = random.Random(2024)
    write_logiqa(rng, HERE / "logiqa_v2")
    write_c3(rng, HERE / "c3")
    write_reclor(rng, HERE / "reclor")
    write_mmlu(rng, HERE / "mmlu")
    more = random.Random(2025)
    write_c3_train_test(more, HERE / "c3")
    write_cmmlu(more, HERE / "cmmlu")
    write_ceval(more, HERE / "ceval")


if __name__ == "__main__":
    main()
