"""The synthetic world's look and language: palette, attributes, synonyms, captions, and the parser.

Shared by `data/synthetic.py` (which renders the world) and `videodit/eval.py` (which judges it).

The world has one object per clip with four attributes:

    colour      red green blue yellow white purple orange cyan
    shape       circle square triangle
    motion      left right up down bouncing still
    background  black "dark gray" navy

`make_caption(attrs, rng)` writes one of many natural phrasings (templates x synonyms);
`parse_prompt(text)` reads any of them, and ordinary user prompts using the same words, back into
attributes (None for an attribute it cannot find). `heldout_combos()` is the fixed list of
colour-shape-motion combinations that the training manifest never contains.
"""

from __future__ import annotations

import re

import numpy as np

PALETTE = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 40),
    "white": (245, 245, 245),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "cyan": (30, 220, 230),
}
BACKGROUND_RGB = {"black": (0, 0, 0), "dark gray": (48, 48, 48), "navy": (16, 24, 96)}
COLOURS = ("red", "green", "blue", "yellow", "white", "purple", "orange", "cyan")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "bouncing", "still")
BACKGROUNDS = ("black", "dark gray", "navy")

COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet", "cherry-red"),
    "green": ("green", "emerald", "grass-green"),
    "blue": ("blue", "cobalt", "sapphire", "royal blue"),
    "yellow": ("yellow", "golden", "lemon", "canary-yellow"),
    "white": ("white", "snow-white", "ivory"),
    "purple": ("purple", "violet", "amethyst"),
    "orange": ("orange", "tangerine", "amber"),
    "cyan": ("cyan", "turquoise", "aqua", "teal"),
}
SHAPE_WORDS = {
    "circle": ("ball", "disk", "circle", "disc", "dot", "sphere", "orb"),
    "square": ("box", "block", "square", "cube", "tile"),
    "triangle": ("triangle", "pyramid", "wedge"),
}
BACKGROUND_WORDS = {
    "black": ("black", "pitch-black", "jet-black", "solid black"),
    "dark gray": ("dark gray", "dark grey", "charcoal", "slate gray"),
    "navy": ("navy", "navy blue", "midnight blue", "deep navy"),
}
# Two grammatical forms per motion: third person ("a ball rolls ...") and participle ("a ball rolling ...").
MOTION_VERB = {
    "left": ("moves to the left", "rolls to the left", "drifts leftward", "slides left",
             "travels from right to left", "glides to the left", "heads left"),
    "right": ("moves to the right", "rolls to the right", "drifts rightward", "slides right",
              "travels from left to right", "glides to the right", "heads right"),
    "up": ("moves up", "rises", "floats upward", "climbs toward the top", "drifts upward", "ascends"),
    "down": ("moves down", "falls", "sinks", "drops toward the bottom", "drifts downward", "descends"),
    "bouncing": ("bounces up and down", "bounces", "hops up and down", "keeps bouncing"),
    "still": ("sits still", "stays in place", "rests motionless", "does not move", "remains stationary"),
}
MOTION_ING = {
    "left": ("moving to the left", "rolling to the left", "drifting leftward", "sliding left",
             "travelling from right to left", "gliding left"),
    "right": ("moving to the right", "rolling to the right", "drifting rightward", "sliding right",
              "travelling from left to right", "gliding right"),
    "up": ("moving up", "rising", "floating upward", "climbing toward the top", "ascending"),
    "down": ("moving down", "falling", "sinking", "dropping toward the bottom", "descending"),
    "bouncing": ("bouncing up and down", "bouncing", "hopping up and down"),
    "still": ("sitting still", "staying in place", "resting motionless", "standing still"),
}

# Fields: {a_obj} "a red ball" / "an orange box"; {obj} "red ball"; {a_shape} "a ball"; {colour} {shape}
# {verb} third-person motion; {ing} participle motion; {bg} background words.
TEMPLATES = (
    "{a_obj} {verb} on a {bg} background",
    "{obj} {ing}, {bg} background",
    "{a_shape} in {colour} {verb} against a {bg} backdrop",
    "{bg} background with {a_obj} {ing}",
    "video of {a_obj} {ing} over a {bg} background",
    "{a_obj} that {verb}, on {bg}",
    "on a {bg} background, {a_obj} {verb}",
    "{obj}, {ing}, {bg} backdrop",
    "there is {a_obj} {ing} on a plain {bg} background",
    "a single {obj} {verb} in front of a {bg} screen",
    "{a_obj} {ing} in front of a {bg} wall",
    "clip: {obj} {ing}; background {bg}",
    "the {shape} is {colour} and it {verb}; the background is {bg}",
    "{a_shape} coloured {colour}, {ing} against {bg}",
    "watch as {a_obj} {verb} on a {bg} background",
    "a simple animation of {a_obj} {ing}, {bg} background",
    "{obj} {ing} across a {bg} frame",
    "{bg} scene: {a_obj} {verb}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def heldout_combos() -> list[tuple[str, str, str]]:
    """The 16 of 8*3*6 = 144 (colour, shape, motion) combinations never rendered into training.

    Chosen by a fixed rule so that every colour is held out twice and every shape and motion 2-6
    times: each attribute value stays common in training, only the combinations are new.
    """
    return [
        (c, SHAPES[(i + j) % 3], MOTIONS[(2 * i + 3 * j + 1) % 6])
        for j in range(2)
        for i, c in enumerate(COLOURS)
    ]


def training_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) combination that is not held out (128 of 144)."""
    held = set(heldout_combos())
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if (c, s, m) not in held]


def make_caption(attrs: dict, rng: np.random.Generator, template: int | None = None) -> str:
    """A natural phrasing of `attrs` {colour, shape, motion, background}, picked by `rng`.

    `template` fixes the template index (for tests); synonyms are always drawn from `rng`.
    """
    for key, allowed in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS),
                         ("background", BACKGROUNDS)):
        if attrs.get(key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {attrs.get(key)!r}")
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    colour = pick(COLOUR_WORDS[attrs["colour"]])
    shape = pick(SHAPE_WORDS[attrs["shape"]])
    obj = f"{colour} {shape}"
    fields = {
        "colour": colour,
        "shape": shape,
        "obj": obj,
        "a_obj": f"{_article(obj)} {obj}",
        "a_shape": f"{_article(shape)} {shape}",
        "verb": pick(MOTION_VERB[attrs["motion"]]),
        "ing": pick(MOTION_ING[attrs["motion"]]),
        "bg": pick(BACKGROUND_WORDS[attrs["background"]]),
    }
    index = int(rng.integers(len(TEMPLATES))) if template is None else template
    text = TEMPLATES[index].format(**fields)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


# Backgrounds are matched (and removed) first: "navy blue" must not read as a blue object.
_BACKGROUND_EXTRA = {"navy": (), "dark gray": ("gray", "grey"), "black": ()}
_BACKGROUND_RE = [
    (name, re.compile(rf"\b({_alternation(BACKGROUND_WORDS[name] + extra)})\b"))
    for name, extra in _BACKGROUND_EXTRA.items()
]
_COLOUR_RE = re.compile(
    r"\b(" + _alternation(w for ws in COLOUR_WORDS.values() for w in ws) + r")\b"
)
_COLOUR_OF = {w: c for c, ws in COLOUR_WORDS.items() for w in ws}
_SHAPE_RE = [
    ("circle", re.compile(r"\b(ball|disk|disc|circle|dot|sphere|orb|round)s?\b")),
    ("square", re.compile(r"\b(box|boxes|block|square|cube|tile|rectangle)s?\b")),
    ("triangle", re.compile(r"\b(triangle|triangular|pyramid|wedge)s?\b")),
]
_BOUNCING_RE = re.compile(r"\b(bounc\w*|hop\w*|up and down|jump\w*)\b")
_STILL_RE = re.compile(
    r"\b(still|motionless|stationary|static|unmoving|in place|not move|not moving|rests|resting|"
    r"sits|sitting|standing|remains)\b"
)
# Direction words; the LAST one wins ("travels from right to left" -> left, "climbs toward the top" -> up).
_DIRECTION_RE = re.compile(
    r"\b(left|leftwards?|right|rightwards?|up|upwards?|rises|rising|rise|climbs?|climbing|ascends?|ascending|"
    r"top|down|downwards?|falls?|falling|sinks?|sinking|drops?|dropping|descends?|descending|bottom)\b"
)
_DIRECTION_OF = {"left": "left", "right": "right", "top": "up", "bottom": "down"}


def _direction(word: str) -> str:
    if word in _DIRECTION_OF:
        return _DIRECTION_OF[word]
    if word.startswith(("left",)):
        return "left"
    if word.startswith(("right",)):
        return "right"
    if word.startswith(("up", "ris", "climb", "ascend")):
        return "up"
    return "down"


def parse_prompt(text: str) -> dict:
    """Read the intent of a prompt -> {"colour", "shape", "motion", "background"}; None where absent.

    Understands every synonym and template of `make_caption` and plain prompts in the same words,
    e.g. "crimson disk drifting leftward" -> colour red, shape circle, motion left, background None.
    """
    s = " " + text.lower().replace("_", " ") + " "
    background = None
    for name, pattern in _BACKGROUND_RE:
        m = pattern.search(s)
        if m:
            background = name
            s = s[: m.start()] + " " + s[m.end():]
            break
    m = _COLOUR_RE.search(s)
    colour = _COLOUR_OF[m.group(1)] if m else None
    shape = next((name for name, pattern in _SHAPE_RE if pattern.search(s)), None)
    if _BOUNCING_RE.search(s):
        motion = "bouncing"
    elif _STILL_RE.search(s):
        motion = "still"
    else:
        words = _DIRECTION_RE.findall(s)
        motion = _direction(words[-1]) if words else None
    return {"colour": colour, "shape": shape, "motion": motion, "background": background}
