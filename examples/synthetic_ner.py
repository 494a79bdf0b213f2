"""Generated Chinese sentences with person, place and organisation entities, for the NER and
seq2seq examples (no download needed), and the entity-level F1 they report.

Each sentence fills a template with names drawn from fixed lists; its entities are
``(start, end, type)`` character spans, ``end`` inclusive (bert4keras' NER convention).
"""

import random

TYPES = ["PER", "LOC", "ORG"]
SURNAMES = "张王李赵刘陈杨黄周吴徐孙马朱胡郭何林罗高"
GIVEN = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明",
         "超", "秀英", "建国", "小红", "志强", "海燕", "文博"]
PLACES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津",
          "苏州", "长沙", "青岛", "厦门", "昆明", "大连", "沈阳", "哈尔滨", "乌鲁木齐"]
ORGS = ["清华大学", "人民银行", "华为公司", "腾讯公司", "中国科学院", "新华社", "国家图书馆",
        "中央电视台", "红十字会", "铁路局", "气象台", "市人民医院", "第一中学", "自然博物馆"]
TEMPLATES = [
    "{PER}在{LOC}的{ORG}工作。", "{ORG}宣布{PER}将于下月访问{LOC}。", "昨天{PER}去了{LOC}。",
    "{PER}和{PER}一起参观了{ORG}。", "来自{LOC}的{PER}加入了{ORG}。", "{LOC}今天天气很好。",
    "{ORG}在{LOC}举办了展览，{PER}到场致辞。", "据{ORG}报道，{LOC}发生了地震。",
    "{PER}说他明年要搬到{LOC}。", "我们明天在{ORG}门口见面。", "{PER}毕业于{ORG}。",
    "从{LOC}到{LOC}的高铁很快。", "这是{PER}第一次来{LOC}。", "今年的会议由{ORG}主办。",
]


def person(rng):
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


def sentence(rng):
    """One generated sentence and its entity spans ``[(start, end, type), ...]``."""
    template = rng.choice(TEMPLATES)
    text, entities, i = "", [], 0
    while i < len(template):
        if template[i] == "{":
            kind = template[i + 1:i + 4]
            name = {"PER": person, "LOC": lambda r: r.choice(PLACES),
                    "ORG": lambda r: r.choice(ORGS)}[kind](rng)
            entities.append((len(text), len(text) + len(name) - 1, kind))
            text += name
            i += 5
        else:
            text += template[i]
            i += 1
    return text, entities


def sentences(count, seed):
    """``count`` generated ``(text, entities)`` pairs."""
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(count)]


def characters():
    """Every character the generated sentences can hold, sorted."""
    pieces = [SURNAMES, "".join(GIVEN), "".join(PLACES), "".join(ORGS), "".join(TEMPLATES),
              "、"]  # the separator of entity_titles
    return sorted(set("".join(pieces)) - set("{}PERLOCG"))


def vocabulary():
    """A character WordPiece vocabulary ``{token: id}`` covering the generated sentences."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters()
    return {token: i for i, token in enumerate(tokens)}


def entity_f1(predicted, gold):
    """Entity-level F1 (exact span and type) of sets of ``(start, end, type)`` per sentence."""
    found = sum(len(p & g) for p, g in zip(predicted, gold))
    guessed, wanted = sum(len(p) for p in predicted), sum(len(g) for g in gold)
    return 2 * found / (guessed + wanted) if guessed + wanted else 1.0


def entity_titles(samples):
    """The seq2seq examples' task: ``(text, its entities joined by 、)`` for each sample."""
    return [(text, "、".join(text[s:e + 1] for s, e, _ in entities)) for text, entities in samples]
