"""Positive continuation, the classic sentiment-RL task (Ziegler et al., arXiv 1909.08593, §4.1), scored by
VADER (Hutto & Gilbert 2014, `vaderSentiment`) instead of a trained classifier.

Prompts: "Continue this text positively: <opening>", seven phrasings ("hopeful" and "joyful" held out).
Openings are 60 neutral everyday sentences of 8-12 words written for this module (42 for train, 18 for
held-out, disjoint). Deviation from the paper: the openings are whole sentences, not cut-off prefixes, so
that one generic positive sentence is a fluent gold continuation. The reference is one of 24 positive
sentences (16 train, 8 held-out).

Scoring, on the answer alone: sentiment s = clip((compound + 0.6) / 1.2, 0, 1), so compound >= 0.6 gives 1
and a neutral answer 0.5; times a repetition factor min(1, distinct/0.8)² over lower-cased words (distinct
= unique/total), a short-answer factor min(1, words/6) and a length factor past 30 words. A non-empty
answer keeps at least 0.02 of the sentiment term so that even a hostile answer ranks above nothing at
all before the other factors apply. VADER rewards "good good good good" with compound 0.89; the repetition
and short-answer factors bring it below 0.1. A fluency factor min(1, function-word share / 0.2), floored at
0.1, stops word salad ("happy joy love great wonderful amazing") from scoring like a sentence.
"""

from __future__ import annotations

import functools
import random

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from picochat.data.tasks.base import Task, by_split, choose_template, length_factor, plain_words

FAMILY = "sentiment"
MIN_WORDS = 6
MAX_WORDS = 30
DISTINCT_TARGET = 0.8
FUNCTION_TARGET = 0.2  # share of function words at which the fluency factor reaches 1
FUNCTION_WORDS = frozenset((
    "a", "an", "the", "and", "or", "but", "so", "of", "to", "in", "on", "at", "for", "with", "by", "from",
    "into", "out", "up", "over", "after", "before", "as", "then", "there", "here", "it", "its", "is", "was",
    "were", "be", "been", "being", "am", "are", "this", "that", "these", "those", "i", "we", "you", "he",
    "she", "they", "me", "us", "him", "her", "them", "my", "our", "your", "his", "their", "had", "has",
    "have", "do", "did", "not", "no", "very", "really", "just", "too", "all", "some", "every",
))  # fmt: skip

TEMPLATES = {
    "positively": "Continue this text positively: {t}",
    "happy": "Continue this text in a happy way: {t}",
    "cheerful": "Finish this on a cheerful note: {t}",
    "ending": "Write a positive ending for this: {t}",
    "upbeat": "Keep this going and make it upbeat: {t}",
    "hopeful": "Add a hopeful next sentence to this: {t}",
    "joyful": "Continue this so that it sounds joyful: {t}",
}
HELDOUT = frozenset({"hopeful", "joyful"})

OPENINGS = {
    "train": (
        "The bus turned at the corner of the street at noon.",
        "My neighbor carried a box of books up the stairs.",
        "We walked to the market on a cloudy Saturday morning.",
        "The teacher wrote three questions on the board before class.",
        "I opened the window and looked down at the road.",
        "The train left the station a few minutes after eight.",
        "She put the kettle on and sat down at the table.",
        "The old clock in the hall showed nine when we arrived.",
        "He parked the car behind the library and got out.",
        "Our class visited the museum in town last week.",
        "The shop on the corner opens at seven every day.",
        "My brother moved to a new flat near the river.",
        "The letter arrived on Tuesday in a plain brown envelope.",
        "We took the long road home through the small village.",
        "The meeting started at ten in the room upstairs.",
        "I found my grandfather's map in a drawer last night.",
        "The ferry crossed the bay while the gulls circled overhead.",
        "She packed a bag and caught the early bus north.",
        "The cat sat on the wall and watched the street.",
        "Dad moved the chairs from the kitchen into the garden.",
        "The new student sat in the second row by the door.",
        "We waited at the station for the next train south.",
        "My sister started her first job in the city today.",
        "The baker turned on the ovens before the sun rose.",
        "He read the instructions twice before he opened the box.",
        "The path through the woods turned left at the bridge.",
        "I called my aunt on Sunday to talk about the trip.",
        "The farmer drove his tractor to the far field this morning.",
        "The children lined up outside the hall after lunch.",
        "She painted the fence on Saturday while I washed the car.",
        "We moved the piano from the front room to the hall.",
        "The doctor asked me to come back in two weeks.",
        "Mom wrote a list of things to buy at the store.",
        "The boat was tied to the dock near the fish market.",
        "My cousin and I took the bikes out after school.",
        "The mail came late because the van had a flat tire.",
        "He planted a row of beans along the garden wall.",
        "The radio was on in the kitchen while we made dinner.",
        "I sat on the porch and counted the cars going by.",
        "The town hall clock was fixed by a man from the city.",
        "Our team practiced in the gym on Thursday evening.",
        "She opened the door and walked into the quiet office.",
    ),
    "heldout": (
        "The plane landed a little after midnight in the rain.",
        "My uncle fixed the gate with a hammer and some nails.",
        "We cleaned the attic and carried the boxes down.",
        "The library moved its old maps to the second floor.",
        "He set the clock for six and turned off the lamp.",
        "The road to the coast runs past two small farms.",
        "I wrote my name on the form and handed it back.",
        "The kids built a fort out of chairs and blankets.",
        "Grandma kept the photos in a tin box under her bed.",
        "The workers started on the new bridge in early spring.",
        "She rode the tram to the end of the line.",
        "The dog followed us all the way to the lake.",
        "We met at the cafe across from the post office.",
        "The lights in the theater went down before the show.",
        "My cousin drove six hours to visit us in July.",
        "The fishermen brought their nets in before dawn on Monday.",
        "Our neighbors put a new fence around the back yard.",
        "I took the stairs because the lift was being repaired.",
    ),
}
CONTINUATIONS = {
    "train": (
        "It turned out to be a wonderful day, full of laughter and joy.",
        "Everyone smiled, and it became one of our happiest memories.",
        "It was a lovely surprise, and we felt truly grateful.",
        "Soon the sun came out and everything felt bright and hopeful.",
        "We laughed together and had a really great time.",
        "It was the best day we had enjoyed in years.",
        "Everything went perfectly, and we were so happy and proud.",
        "Our friends cheered, and the whole day felt warm and wonderful.",
        "It brought us so much joy that we still smile about it.",
        "The evening ended with hugs, laughter and a delicious dinner.",
        "I felt calm, happy and thankful for such a beautiful moment.",
        "It was a pleasant, cheerful start to an amazing week.",
        "Good news arrived, and we celebrated with our best friends.",
        "Everyone agreed it was a fantastic, fun and lovely afternoon.",
        "The kind people there made us feel welcome and loved.",
        "We were thrilled, and the whole town shared our happiness.",
    ),
    "heldout": (
        "It became a beautiful day that we will always treasure.",
        "We felt lucky and glad, and the future looked bright.",
        "Kind words and warm smiles made the moment truly special.",
        "It was an excellent day, full of fun and friendship.",
        "Everyone was delighted, and we laughed until the sun went down.",
        "We had a wonderful time and made many happy memories.",
        "It was a great success, and everyone felt proud and happy.",
        "The day was peaceful and sweet, and we loved every minute.",
    ),
}


@functools.lru_cache(maxsize=1)
def analyzer() -> SentimentIntensityAnalyzer:
    """One VADER analyzer per process (it reads its lexicon file on construction)."""
    return SentimentIntensityAnalyzer()


def generate(rng: random.Random, split: str) -> Task:
    """One positive-continuation instruction of the given split."""
    template_id = choose_template(rng, TEMPLATES, HELDOUT, split)
    opening = rng.choice(by_split(OPENINGS["train"], OPENINGS["heldout"], split))
    reference = rng.choice(by_split(CONTINUATIONS["train"], CONTINUATIONS["heldout"], split))
    prompt = TEMPLATES[template_id].format(t=opening)
    return Task(FAMILY, template_id, prompt, reference, {"opening": opening}, split)


def sentiment_term(compound: float) -> float:
    """VADER compound in [-1, 1] mapped to [0, 1]: 0 at <= -0.6, 0.5 at 0, 1 at >= 0.6."""
    return min(1.0, max(0.0, (compound + 0.6) / 1.2))


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    words = plain_words(answer)
    if not words:
        return 0.0
    compound = analyzer().polarity_scores(answer)["compound"]
    sentiment = max(0.02, sentiment_term(compound))
    repetition = min(1.0, len(set(words)) / len(words) / DISTINCT_TARGET) ** 2
    short = min(1.0, len(words) / MIN_WORDS)
    fluency = max(0.1, min(1.0, sum(w in FUNCTION_WORDS for w in words) / len(words) / FUNCTION_TARGET))
    return sentiment * repetition * short * fluency * length_factor(len(words), MAX_WORDS)
