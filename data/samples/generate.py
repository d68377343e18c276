"""Regenerate the bundled instruction and pretraining samples (deterministic).

The samples are synthetic but written in each dataset's real file layout, so the readers,
the demo and the tests exercise the same code paths as real corpora:

    python -m data.samples.generate
"""
import gzip
import json
import random
from pathlib import Path

HERE = Path(__file__).parent

ANIMALS = [("猫", "cat"), ("狗", "dog"), ("马", "horse"), ("鸟", "bird"), ("鱼", "fish"),
           ("牛", "cow"), ("羊", "sheep"), ("猪", "pig"), ("兔子", "rabbit"), ("老虎", "tiger")]
COLOURS = [("红色", "red"), ("蓝色", "blue"), ("绿色", "green"), ("黄色", "yellow"),
           ("黑色", "black"), ("白色", "white"), ("紫色", "purple"), ("橙色", "orange")]
CAPITALS = [("中国", "北京", "China", "Beijing"), ("日本", "东京", "Japan", "Tokyo"),
            ("法国", "巴黎", "France", "Paris"), ("英国", "伦敦", "the United Kingdom", "London"),
            ("德国", "柏林", "Germany", "Berlin"), ("意大利", "罗马", "Italy", "Rome"),
            ("俄罗斯", "莫斯科", "Russia", "Moscow"), ("埃及", "开罗", "Egypt", "Cairo")]

PARAGRAPHS = [
    ("长江", "长江是中国最长的河流，全长约六千三百公里，流经青海、西藏、四川、重庆、湖北、湖南、江西、"
             "安徽、江苏和上海，最后注入东海。长江流域是中国经济最发达的地区之一。"),
    ("茶", "中国是茶的故乡。早在几千年前，中国人就开始种茶、饮茶。绿茶、红茶、乌龙茶和白茶各有特色，"
           "茶文化已经成为中国传统文化的重要组成部分。"),
    ("春节", "春节是中国最重要的传统节日。人们在除夕夜吃年夜饭、守岁，第二天互相拜年。"
             "孩子们会收到红包，街上到处挂着红灯笼，十分热闹。"),
    ("数学", "数学是研究数量、结构、变化以及空间等概念的一门学科。加法、减法、乘法和除法是最基本的运算，"
             "学生在小学阶段就开始学习这些运算。"),
    ("The Yellow River", "The Yellow River is the second longest river in China. It is often called "
                         "the cradle of Chinese civilization, because many early cities grew up along its banks."),
    ("Language models", "A language model assigns probabilities to sequences of words. Modern language "
                        "models are neural networks trained to predict the next token on large corpora of text."),
    ("Reading", "Reading every day helps children learn new words. Teachers often ask students to read "
                "a short story and then answer questions about it."),
    ("计算机", "计算机是一种能够按照程序自动进行计算和处理数据的电子设备。现代计算机由中央处理器、内存、"
             "硬盘和输入输出设备组成。"),
]


def instruction_records(rng: random.Random) -> list[dict]:
    records = []
    for _ in range(60):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        records.append({"instruction": f"计算 {a} 加 {b}。", "input": "", "output": f"{a} 加 {b} 等于 {a + b}。"})
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        records.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."})
    for zh, en in ANIMALS + COLOURS:
        records.append({"instruction": "把下面的词翻译成英文。", "input": zh, "output": en})
        records.append({"instruction": "Translate the word into Chinese.", "input": en, "output": zh})
    for country_zh, city_zh, country_en, city_en in CAPITALS:
        records.append({"instruction": f"{country_zh}的首都是哪里？", "input": "", "output": f"{country_zh}的首都是{city_zh}。"})
        records.append({"instruction": f"What is the capital of {country_en}?", "input": "",
                        "output": f"The capital of {country_en} is {city_en}."})
    rng.shuffle(records)
    return records


def coig_items(rng: random.Random) -> list:
    """COIG layout: a JSON list of {inputs, targets}, and of multi-round lists of them."""
    items: list = []
    for country_zh, city_zh, _, _ in CAPITALS:
        items.append({"inputs": f"{country_zh}的首都是哪里？", "targets": f"{country_zh}的首都是{city_zh}。"})
    for zh, en in ANIMALS[:4]:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        items.append([{"inputs": f"“{zh}”用英文怎么说？", "targets": f"“{zh}”的英文是 {en}。"},
                      {"inputs": f"那么 {a} 加 {b} 呢？", "targets": f"{a} 加 {b} 等于 {a + b}。"}])
    return items


def sharegpt_items(rng: random.Random) -> list[dict]:
    """ShareGPT layout: a JSON list of {id, conversations: [{from, value}, ...]}."""
    items = []
    for i, (zh, en) in enumerate(COLOURS):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        turns = [{"from": "human", "value": f"Translate {en} into Chinese."}, {"from": "gpt", "value": zh},
                 {"from": "human", "value": f"And what is {a} times {b}?"}, {"from": "gpt", "value": f"{a * b}."}]
        if i % 3 == 0:
            turns.insert(0, {"from": "system", "value": "You are a helpful bilingual assistant."})
        items.append({"id": f"sharegpt-{i}", "conversations": turns})
    return items


def moss_records() -> list[dict]:
    """moss-003-sft layout: one JSON object per line, turns as {"Human": ..., "MOSS": ...} with MOSS markup."""
    records = []
    for i, (country_zh, city_zh, country_en, city_en) in enumerate(CAPITALS[:4]):
        chat = {"turn_1": {"Human": f"<|Human|>: {country_zh}的首都是哪里？<eoh>\n",
                           "MOSS": f"<|MOSS|>: {country_zh}的首都是{city_zh}。<eom>\n"},
                "turn_2": {"Human": "<|Human|>: 用英文再说一遍。<eoh>\n",
                           "MOSS": f"<|MOSS|>: The capital of {country_en} is {city_en}.<eom>\n"}}
        records.append({"conversation_id": i + 1, "meta_instruction": "You are MOSS, a helpful assistant.",
                        "num_turns": 2, "chat": chat})
    return records


def write_jsonl(path: Path, rows: list) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(1234)
    records = instruction_records(rng)
    train, dev = records[:-24], records[-24:]
    for name, rows in [("alpaca_zh_en_train.jsonl", train), ("alpaca_zh_en_dev.jsonl", dev)]:
        with open(HERE / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    wudao = [{"id": i, "uniqueKey": f"sample-{i}", "titleUkey": f"title-{i}", "dataType": "百科",
              "title": title, "content": content} for i, (title, content) in enumerate(PARAGRAPHS)]
    with open(HERE / "wudao_sample.json", "w", encoding="utf-8") as f:
        json.dump(wudao, f, ensure_ascii=False, indent=1)

    rng = random.Random(5678)
    for name, items in [("coig_sample.json", coig_items(rng)), ("sharegpt_sample.json", sharegpt_items(rng))]:
        with open(HERE / name, "w", encoding="utf-8") as f:
            json.dump(items, f, ensure_ascii=False, indent=1)
    write_jsonl(HERE / "moss_sample.jsonl", moss_records())
    write_jsonl(HERE / "pretrain_sample.jsonl", [{"text": f"{title}: {content}"} for title, content in PARAGRAPHS[::2]])
    text = "\n\n".join(f"{title}\n{content}" for title, content in PARAGRAPHS[1::2]) + "\n"
    with gzip.GzipFile(HERE / "pretrain_sample.txt.gz", "wb", mtime=0) as f:  # mtime=0: reproducible bytes
        f.write(text.encode("utf-8"))


if __name__ == "__main__":
    main()
