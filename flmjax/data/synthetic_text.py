"""The synthetic corpus's text: a fixed vocabulary and sentence templates (see `flmjax.data.synthetic`).

Templates hold placeholders `{kind}` or `{kindN}` (`N` tells two fillers of one kind apart), filled from
`POOLS`; changing anything here changes the whole corpus.
"""

import re

_NOUNS = """apple bike book bread bridge cake camera car castle cat chair cheese city coat coffee computer cookie
country cup desk dinner doctor dog door dress egg engine farm festival film fish flower forest friend game garden
gift guitar hat hill holiday hotel house island jacket key kitchen lake lamp letter library lunch map market
meeting menu museum mountain movie neighbor newspaper ocean office orange painting park party phone piano picture
pizza plan plant poem question radio recipe restaurant river road salad sandwich school shirt shop song soup
station story street student sweater table teacher ticket town train tree trip umbrella village wallet window
bottle basket blanket candle clock""".split()
_ADJECTIVES = """big small old new quiet busy warm cold cheap expensive beautiful famous strange simple fresh bright
dark friendly lovely quick slow tall tiny green red blue yellow happy sunny rainy local popular modern ancient cozy
noisy clean heavy light sweet spicy delicious wonderful terrible interesting boring early late good""".split()
_VERBS = """buy cook find visit read watch paint fix clean carry build open sell borrow share order bring try choose
draw plant wash call play write check pack rent explore move""".split()
_NAMES = "Anna Ben Clara David Emma Felix Grace Henry Iris Jack Laura Max Nora Oscar Sofia Tom".split()
_PLACES = "Paris London Tokyo Berlin Rome Madrid Lisbon Vienna Oslo Cairo Sydney Toronto".split()
_TIMES = [
    "today",
    "tomorrow",
    "tonight",
    "yesterday",
    "this weekend",
    "next week",
    "in the morning",
    "after lunch",
    "every day",
    "on Sunday",
]
_NUMBERS = "two three four five six seven eight nine ten eleven twelve".split()


def _plural(noun: str) -> str:
    if noun == "fish":
        return noun
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


POOLS = {
    "noun": _NOUNS,
    "nouns": [_plural(n) for n in _NOUNS],
    "adj": _ADJECTIVES,
    "verb": _VERBS,
    "name": _NAMES,
    "place": _PLACES,
    "time": _TIMES,
    "number": _NUMBERS,
}

GREETINGS = {
    "user": ["Hi, I have a question.", "Hello, are you there?", "Hey, can you help me?"],
    "model": ["Hello, how can I help you {time}?", "Hi there, what would you like to talk about?"],
}
QUESTIONS = [
    "Do you like {nouns}?",
    "Have you ever been to {place}?",
    "What is the best {noun} in {place}?",
    "Can you tell me about the {adj} {noun}?",
    "How do I {verb} a {noun}?",
    "Where can I find a {adj} {noun}?",
    "Why is the {noun} so {adj}?",
    "What should I {verb} {time}?",
    "Is the {noun} near the {noun2}?",
    "Could you help me {verb} the {noun}?",
    "Which {noun} do you think is more {adj}?",
    "Do you know where {name} put the {noun}?",
    "What time does the {noun} open {time}?",
    "How many {nouns} should I {verb}?",
    "Can we {verb} the {nouns} {time}?",
]
STATEMENTS = [
    "I want to {verb} a {adj} {noun} {time}.",
    "My friend {name} has {number} {nouns}.",
    "I went to {place} {time}.",
    "The {noun} in my street is very {adj}.",
    "I need a new {noun} for the {noun2}.",
    "We are going to {verb} the {noun} {time}.",
    "{name} thinks the {noun} is too {adj}.",
]
ANSWERS = [
    "I think the {adj} {noun} is a good choice.",
    "You can {verb} the {noun} {time}.",
    "The best {noun} in {place} is near the {noun2}.",
    "First you {verb} the {noun}, then you {verb2} it.",
    "Many people {verb} {nouns} {time}.",
    "That sounds like a {adj} idea.",
    "Sure, I can help you {verb} the {noun}.",
    "Yes, the {noun} is very {adj} {time}.",
    "No, I have never been to {place}, but I hear it is {adj}.",
    "Let me tell you about the {adj} {noun} in {place}.",
    "A {adj} {noun} usually costs about {number} dollars.",
    "If you want a {adj} {noun}, try the {noun2} near the {noun3}.",
    "It depends on how {adj} you want the {noun} to be.",
    "Good question, most {nouns} are {adj} and {adj2}.",
    "I would {verb} the {noun} first and then the {noun2}.",
]
INTERRUPTIONS = [
    "Wait, what about the {noun}?",
    "Sorry, I meant the {adj} {noun}.",
    "Hold on, can you {verb} the {noun} instead?",
    "Actually, I already have a {noun}.",
    "Sorry, can you say that again?",
    "Stop, that is not what I asked.",
    "Wait, I have a question.",
]
ACKNOWLEDGEMENTS = [
    "Oh, sorry about that.",
    "Of course, go ahead.",
    "Sure, let me start again.",
    "Okay, let me think about the {noun}.",
]
BACKCHANNELS = ["Yeah.", "Mm-hmm.", "Right.", "Okay.", "Uh-huh.", "I see.", "Sure.", "Got it.", "Oh, really?", "Wow."]
PLACEHOLDER = re.compile(r"\{([a-z]+)(\d?)\}")
