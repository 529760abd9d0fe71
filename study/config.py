"""Study definition: a YAML file -> a validated, immutable StudyConfig.

Every problem is collected (not just the first) and reported with the line of the YAML node it
concerns, so an author can fix a file in one pass: `python -m study validate FILE`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("diffusion", "jpeg", "webp", "avif", "heic")
BASELINES = ("jpeg", "webp", "avif", "heic")
SCHEDULERS = ("balanced", "active")
PLATFORMS = ("none", "prolific", "mturk")
CODEC_MODES = ("auto", "learned", "analytic")  # auto: learned when an adapter is given
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
PROLIFIC_REDIRECT = "https://app.prolific.com/submissions/complete?cc={code}"
PARTICIPANT_NAMES = {"prolific": "Prolific", "mturk": "Mechanical Turk", "anonymous": "a plain web link"}
# What a review board asks a consent page to say; required for studies that pay raters.
CONSENT_DETAILS = {
    "purpose": "what the study is for",
    "duration_minutes": "how long it takes, in minutes",
    "pay": "what a rater is paid",
    "contact": "who to contact (researcher name and e-mail)",
    "data_stored": "what is stored",
    "retention": "how long it is kept",
    "withdrawal": "the right to stop and withdraw, and how",
}


class ConfigError(ValueError):
    """Raised with every problem found; `problems` holds (line, message) pairs."""

    def __init__(self, path: str | Path, problems: list[tuple[int | None, str]]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.path}:{line if line else '?'}: {msg}" for line, msg in self.problems]


@dataclass(frozen=True)
class Condition:
    key: str          # stable name, e.g. "diffusion@0.1"
    method: str       # one of METHODS
    bpp: float        # target bits per pixel


@dataclass(frozen=True)
class ImageSpec:
    key: str
    path: Path                                  # absolute path of the source image
    crop: tuple[int, int, int, int] | None      # x, y, width, height in source pixels
    credit: str


@dataclass(frozen=True)
class Platform:
    kind: str                  # none | prolific | mturk
    completion_code: str
    screenout_code: str
    redirect_url: str | None   # "{code}" is replaced by the code; Prolific has a default
    no_consent_code: str = ""  # where a rater who declines the consent is sent
    allow_anonymous: bool = False   # a platform study that also takes visitors without a platform id

    def completion_url(self, code: str) -> str | None:
        return self.redirect_url.format(code=code) if self.redirect_url else None

    def code_for(self, status: str) -> str | None:
        """The platform code of a session that ended as `status` (completed, screened_out or
        declined), or None: the one the rater is shown and sent back with."""
        return {"completed": self.completion_code, "screened_out": self.screenout_code,
                "declined": self.no_consent_code}.get(status) or None

    def accepts(self, participant: str) -> bool:
        """Whether a rater who came from `participant` (prolific | mturk | anonymous) may take part."""
        if participant == "anonymous":
            return self.kind == "none" or self.allow_anonymous
        return participant == self.kind

    def refusal(self, participant: str) -> str:
        """What a refused rater reads: plain words, and what to do instead."""
        if participant == "anonymous":
            return (f"This study runs on {PARTICIPANT_NAMES[self.kind]}: please open it from there, "
                    "the link carries your participant id.")
        return (f"This study is not set up for {PARTICIPANT_NAMES[participant]}, so it cannot give you a "
                f"completion code. Please return the study on {PARTICIPANT_NAMES[participant]} and tell the "
                "researcher that the study link is misconfigured.")


@dataclass(frozen=True)
class Consent:
    version: str
    text: str                         # the statement a rater agrees to
    details: tuple[tuple[str, str], ...]   # (CONSENT_DETAILS key, value) in CONSENT_DETAILS order

    def detail(self, key: str) -> str | None:
        return dict(self.details).get(key)


@dataclass(frozen=True)
class StudyConfig:
    id: str
    title: str
    question: str
    instructions: str
    show_reference: bool
    images: tuple[ImageSpec, ...]
    conditions: tuple[Condition, ...]
    trials_per_session: int
    catch_trials: int            # per session: original vs. a heavily degraded copy
    catch_method: str
    catch_bpp: float
    repeat_trials: int           # per session: an earlier trial again, sides swapped
    max_catch_failures: int | None  # end the session (screen-out) after this many failed catches
    randomise_sides: bool
    scheduler: str
    sessions_per_rater: int
    consent: Consent
    platform: Platform
    codec_backbone: str
    codec_adapter: str | None
    codec_mode: str
    stimuli_dir: Path            # absolute
    source: Path                 # the YAML file
    digest: str = field(repr=False)  # sha256 of the YAML text, stored with the study
    allow_tie: bool = False      # offer "can't tell" (stored as choice "tie"; never on catch trials)
    results_public: bool = False  # Results visible to anyone, not only with the admin token

    @property
    def consent_text(self) -> str:
        return self.consent.text

    @property
    def consent_version(self) -> str:
        return self.consent.version

    @property
    def regular_trials(self) -> int:
        return self.trials_per_session - self.catch_trials - self.repeat_trials

    def condition(self, key: str) -> Condition:
        return next(c for c in self.conditions if c.key == key)

    def warnings(self) -> list[str]:
        """What an administrator should know about this file although it is valid."""
        out = []
        if self.platform.kind == "none":
            out.append("platform kind is none: raters who arrive with a Prolific or MTurk link are told the study "
                       "is not set up for their platform and cannot start (no completion code to give them)")
        elif self.platform.allow_anonymous:
            out.append(f"platform.allow_anonymous: visitors without a {PARTICIPANT_NAMES[self.platform.kind]} id "
                       "take part too (their sessions get no code and no redirect)")
        if self.results_public:
            out.append("results_public: anyone can see the Results, method names and scores included")
        return out


# ---------------------------------------------------------------------------------------------
# YAML -> plain Python values plus the line of every node (1-based), keyed by its path.

def _plain(node: yaml.Node, path: tuple, lines: dict[tuple, int], problems: list) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k)) if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append((k.start_mark.line + 1, "mapping keys must be strings"))
                continue
            if key in out:
                problems.append((k.start_mark.line + 1, f"duplicate key '{key}'"))
            out[key] = _plain(v, path + (key,), lines, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, path + (i,), lines, problems) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


class _Checker:
    """Reads typed fields out of the plain tree and records problems with their lines."""

    def __init__(self, lines: dict[tuple, int], problems: list):
        self.lines, self.problems = lines, problems

    def line(self, path: tuple) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def bad(self, path: tuple, msg: str) -> None:
        name = ".".join(str(p) for p in path) or "file"
        self.problems.append((self.line(path), f"{name}: {msg}"))

    def get(self, data: dict, path: tuple, key: str, kind, default=..., check=None):
        """Typed field `key` of mapping `data` (at `path`); missing -> default or a problem."""
        if key not in data or data[key] is None:
            if default is ...:
                self.bad(path + (key,), "is required")
                return None
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.bad(path + (key,), f"must be {names}, got {type(value).__name__} {value!r}")
            return None
        if check is not None:
            msg = check(value)
            if msg:
                self.bad(path + (key,), msg)
                return None
        return value

    def unknown(self, data: dict, path: tuple, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                self.bad(path + (key,), f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _one_of(options):
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _positive(v):
    return None if v > 0 else f"must be > 0, got {v}"


def _non_negative(v):
    return None if v >= 0 else f"must be >= 0, got {v}"


def _minutes(v):
    return "must be a number of minutes" if isinstance(v, bool) else _positive(v)


def _key(v):
    return None if _KEY.match(v) else f"{v!r} is not a valid name (letters, digits, _ . @ -)"


TOP_FIELDS = {"id", "title", "question", "instructions", "show_reference", "images", "conditions",
              "trials_per_session", "catch_trials", "repeat_trials", "max_catch_failures",
              "randomise_sides", "scheduler", "sessions_per_rater", "consent", "platform", "codec",
              "stimuli_dir", "exclusion", "allow_tie", "results_public"}


def load(path: str | Path, check_files: bool = True) -> StudyConfig:
    """Parse and validate a study file; raises ConfigError listing every problem found."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, [(None, f"cannot read the file: {e.strerror}")]) from None
    problems: list[tuple[int | None, str]] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(path, [(mark.line + 1 if mark else None, f"not valid YAML: {e}")]) from None
    lines: dict[tuple, int] = {}
    data = _plain(root, (), lines, problems) if root is not None else None
    if not isinstance(data, dict):
        raise ConfigError(path, [(1, "the file must be a YAML mapping of study fields")])
    c = _Checker(lines, problems)
    c.unknown(data, (), TOP_FIELDS)
    base = path.parent

    study_id = c.get(data, (), "id", str, check=_key)
    title = c.get(data, (), "title", str, default=study_id or "")
    question = c.get(data, (), "question", str, default="Which image is closer to the reference?")
    instructions = c.get(data, (), "instructions", str, default="")
    show_reference = c.get(data, (), "show_reference", bool, default=True)

    images, image_keys = [], []
    raw_images = c.get(data, (), "images", list)
    for i, item in enumerate(raw_images or []):
        p = ("images", i)
        if not isinstance(item, dict):
            c.bad(p, "must be a mapping with key, path, crop, credit")
            continue
        c.unknown(item, p, {"key", "path", "crop", "credit"})
        key = c.get(item, p, "key", str, check=_key)
        src = c.get(item, p, "path", str)
        credit = c.get(item, p, "credit", str, default="")
        crop = c.get(item, p, "crop", list, default=None)
        if crop is not None and (len(crop) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in crop)
                                 or crop[2] <= 0 or crop[3] <= 0 or crop[0] < 0 or crop[1] < 0):
            c.bad(p + ("crop",), "must be [x, y, width, height] with integers, width and height > 0")
            crop = None
        if src is None:
            continue
        full = (base / src).resolve()
        if check_files and not full.is_file():
            c.bad(p + ("path",), f"file not found: {full}")
        elif check_files and crop is not None:
            from PIL import ExifTags, Image  # only needed to check the crop against the real size
            with Image.open(full) as im:
                width, height = im.size
                # the crop is in upright pixels, as the stimuli are built (EXIF orientations 5-8 turn by 90 degrees)
                if im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                    width, height = height, width
                if crop[0] + crop[2] > width or crop[1] + crop[3] > height:
                    c.bad(p + ("crop",), f"crop {crop} exceeds the image size {width}x{height}")
        if key is not None:
            images.append(ImageSpec(key, full, tuple(crop) if crop else None, credit))
            image_keys.append((i, key))
    _no_duplicates(c, "images", image_keys)
    if raw_images is not None and not raw_images:
        c.bad(("images",), "needs at least one image")

    conditions, condition_keys = [], []
    raw_conditions = c.get(data, (), "conditions", list)
    for i, item in enumerate(raw_conditions or []):
        p = ("conditions", i)
        if not isinstance(item, dict):
            c.bad(p, "must be a mapping with method and bpp")
            continue
        c.unknown(item, p, {"key", "method", "bpp"})
        method = c.get(item, p, "method", str, check=_one_of(METHODS))
        bpp = c.get(item, p, "bpp", float, check=_positive)
        if method is None or bpp is None:
            continue
        key = c.get(item, p, "key", str, default=f"{method}@{bpp:g}", check=_key)
        if key is not None:
            conditions.append(Condition(key, method, bpp))
            condition_keys.append((i, key))
    _no_duplicates(c, "conditions", condition_keys)
    if raw_conditions is not None and len(raw_conditions) < 2:
        c.bad(("conditions",), "a paired comparison needs at least two conditions")

    trials = c.get(data, (), "trials_per_session", int, default=40, check=_positive)
    catch = c.get(data, (), "catch_trials", (int, dict), default=0)
    catch_n, catch_method, catch_bpp = 0, "jpeg", 0.05
    if isinstance(catch, dict):
        c.unknown(catch, ("catch_trials",), {"count", "method", "bpp"})
        catch_n = c.get(catch, ("catch_trials",), "count", int, default=0, check=_non_negative)
        catch_method = c.get(catch, ("catch_trials",), "method", str, default="jpeg", check=_one_of(BASELINES))
        catch_bpp = c.get(catch, ("catch_trials",), "bpp", float, default=0.05, check=_positive)
    elif isinstance(catch, int):
        catch_n = catch if catch >= 0 else c.bad(("catch_trials",), "must be >= 0")
    repeats = c.get(data, (), "repeat_trials", int, default=0, check=_non_negative)
    max_fail = c.get(data, (), "max_catch_failures", int, default=None, check=_positive)
    if trials and catch_n is not None and repeats is not None:
        regular = trials - catch_n - repeats
        if regular < 1:
            c.bad(("trials_per_session",), f"{trials} trials leave no room for regular trials after "
                                          f"{catch_n} catch and {repeats} repeat trials")
        elif repeats > regular:
            c.bad(("repeat_trials",), f"{repeats} repeats need at least as many regular trials ({regular})")

    randomise = c.get(data, (), "randomise_sides", bool, default=True)
    scheduler = c.get(data, (), "scheduler", str, default="balanced", check=_one_of(SCHEDULERS))
    per_rater = c.get(data, (), "sessions_per_rater", int, default=1, check=_positive)

    allow_tie = c.get(data, (), "allow_tie", bool, default=False)
    results_public = c.get(data, (), "results_public", bool, default=False)

    plat = c.get(data, (), "platform", dict, default={"kind": "none"})
    c.unknown(plat or {}, ("platform",), {"kind", "completion_code", "screenout_code", "no_consent_code",
                                          "redirect_url", "allow_anonymous"})
    plat = plat or {}
    kind = c.get(plat, ("platform",), "kind", str, default="none", check=_one_of(PLATFORMS))
    paid = kind in ("prolific", "mturk")
    completion = c.get(plat, ("platform",), "completion_code", str, default=None if kind == "none" else ...)
    # On Prolific every exit needs its own code, or the rater is left on a page with nowhere to go.
    screenout = c.get(plat, ("platform",), "screenout_code", str,
                      default=... if kind == "prolific" and max_fail is not None else None)
    no_consent = c.get(plat, ("platform",), "no_consent_code", str, default=... if kind == "prolific" else None)
    allow_anonymous = c.get(plat, ("platform",), "allow_anonymous", bool, default=False)
    redirect = c.get(plat, ("platform",), "redirect_url", str, default=None)

    consent = c.get(data, (), "consent", dict, default={})
    consent = consent or {}
    c.unknown(consent, ("consent",), {"text", "version", *CONSENT_DETAILS})
    consent_text = c.get(consent, ("consent",), "text", str)
    consent_version = c.get(consent, ("consent",), "version", (str, int, float))
    details = []
    for key, meaning in CONSENT_DETAILS.items():
        kind_of = (int, float) if key == "duration_minutes" else str
        value = c.get(consent, ("consent",), key, kind_of, default=None, check=_minutes if kind_of != str else None)
        if paid and consent.get(key) is None:
            c.bad(("consent", key), f"is required for a {kind} study ({meaning})")
        elif isinstance(value, str) and not value.strip():
            c.bad(("consent", key), "must not be empty")
        elif value is not None:
            details.append((key, f"{value:g}" if key == "duration_minutes" else value.strip()))
    if redirect is None and kind == "prolific":
        redirect = PROLIFIC_REDIRECT
    if redirect is not None and not redirect.startswith(("https://", "http://")):
        c.bad(("platform", "redirect_url"), "must be an http(s) URL")

    codec = c.get(data, (), "codec", dict, default={})
    c.unknown(codec or {}, ("codec",), {"backbone", "adapter", "mode"})
    backbone = c.get(codec or {}, ("codec",), "backbone", str, default="demo")
    adapter = c.get(codec or {}, ("codec",), "adapter", str, default=None)
    mode = c.get(codec or {}, ("codec",), "mode", str, default="auto", check=_one_of(CODEC_MODES))
    stimuli_dir = c.get(data, (), "stimuli_dir", str, default=f"{study_id or 'study'}_stimuli")
    c.get(data, (), "exclusion", dict, default=None)   # rater-exclusion rules: read by `scores --exclusions`

    if problems:
        problems.sort(key=lambda lp: (lp[0] or 0))
        raise ConfigError(path, problems)
    return StudyConfig(
        id=study_id, title=title, question=question, instructions=instructions,
        show_reference=show_reference, images=tuple(images), conditions=tuple(conditions),
        trials_per_session=trials, catch_trials=catch_n, catch_method=catch_method,
        catch_bpp=catch_bpp, repeat_trials=repeats, max_catch_failures=max_fail,
        randomise_sides=randomise, scheduler=scheduler, sessions_per_rater=per_rater,
        consent=Consent(str(consent_version), consent_text, tuple(details)),
        platform=Platform(kind, completion or "", screenout or "", redirect, no_consent or "", allow_anonymous),
        codec_backbone=backbone, codec_adapter=adapter, codec_mode=mode,
        stimuli_dir=(base / stimuli_dir).resolve(), source=path,
        digest=hashlib.sha256(text.encode()).hexdigest(), allow_tie=allow_tie, results_public=results_public)


def _no_duplicates(c: _Checker, section: str, keys: list[tuple[int, str]]) -> None:
    seen = set()
    for i, key in keys:
        if key in seen:
            c.bad((section, i), f"duplicate key {key!r}")
        seen.add(key)
