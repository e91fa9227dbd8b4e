"""The Adience fold files and the label rules: rows -> examples with an age group and a gender.

Levi & Hassner's protocol (`age_rule="paper"`, the default) keeps only the eight group strings
and repairs one typo, "(25, 23)" -> "(25, 32)"; every other string is dropped, counted by string.
An age string the published files do not have (below), such as "(1, 99)", is a problem of its
row under either rule: reported with its fold file and line and skipped (fatal with strict).
"nearest" is our opt-in extension: a single age, or a range by its midpoint, goes to the group
whose interval ([0, 2], [4, 6], [8, 12], [15, 20], [25, 32], [38, 43], [48, 53], [60, inf))
holds it, else to the nearest interval by distance to its edge, ties to the older group
(35 -> 38-43, 3 -> 4-6). "None" has no age under either rule.

Every age string of the published fold files (19,370 rows), with its class under each rule
(tests/test_adience.py checks this table against the files):

    age string    rows  paper     nearest
    (25, 32)      5004  4 25-32   4 25-32
    (0, 2)        2488  0 0-2     0 0-2
    (38, 43)      2293  5 38-43   5 38-43
    (4, 6)        2140  1 4-6     1 4-6
    (8, 12)       2124  2 8-12    2 8-12
    (15, 20)      1642  3 15-20   3 15-20
    (60, 100)      872  7 60-100  7 60-100
    (48, 53)       830  6 48-53   6 48-53
    None           748  dropped   dropped
    35             293  dropped   5 38-43
    13             168  dropped   2 8-12
    22             149  dropped   3 15-20
    34             105  dropped   4 25-32
    23              96  dropped   4 25-32
    45              88  dropped   5 38-43
    (27, 32)        77  dropped   4 25-32
    55              76  dropped   6 48-53
    36              56  dropped   5 38-43
    (38, 42)        46  dropped   5 38-43
    57              24  dropped   7 60-100
    3               18  dropped   1 4-6
    29              11  dropped   4 25-32
    (38, 48)         6  dropped   5 38-43
    58               5  dropped   7 60-100
    2                3  dropped   0 0-2
    32               3  dropped   4 25-32
    56               2  dropped   6 48-53
    (8, 23)          1  dropped   3 15-20
    42               1  dropped   5 38-43
    46               1  dropped   6 48-53
    (25, 23)         0  4 25-32   4 25-32   (the typo; absent from these files)

Rows per class:

    class        0     1     2     3     4     5    6    7  dropped
    paper     2488  2140  2124  1642  5004  2293  830  872     1977
    nearest   2491  2158  2292  1792  5296  2783  909  901      748

Gender: f 9372, m 8120, u 1099, empty 779; "u" and empty are UNKNOWN, and the gender task drops
them. Subjects are user ids (168; each in one fold); a face_id (2,284) names one person of an
album. Pure Python: reading labels needs no TensorFlow.
"""

import collections
import dataclasses
import math
import os
import re

FOLDS = 5
FOLD_FILE = "fold_{}_data.txt"
COLUMNS = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
           "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
AGE_GROUPS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)",
              "(60, 100)")  # class = index
AGE_GROUP_NAMES = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
GENDERS = ("f", "m")  # class = index
GENDER_NAMES = ("female", "male")
UNKNOWN = -1  # the class of a label a row does not have
AGE_RULES = ("paper", "nearest")
TASKS = ("age", "gender")
# Where each layout of the download keeps a face crop: <layout>/<user_id>/<prefix>.<face_id>.<image>
_IMAGE_PREFIXES = {"aligned": "landmark_aligned_face", "faces": "coarse_tilt_aligned_face"}
LAYOUTS = tuple(_IMAGE_PREFIXES)

# The one typo Levi & Hassner's data-preparation script repairs; every other string is dropped.
_AGE_TYPOS = {"(25, 23)": "(25, 32)"}
_NO_AGE = "None"
# Every age string of the published fold files (the table above). Another one, even well-formed
# such as "(1, 99)", is a problem of its row (reported with its line, fatal with strict), never
# silently dropped or mapped.
KNOWN_AGE_STRINGS = frozenset(AGE_GROUPS + tuple(_AGE_TYPOS) + (
    _NO_AGE, "35", "13", "22", "34", "23", "45", "55", "36", "57", "3", "29", "58", "2", "32",
    "56", "42", "46", "(27, 32)", "(38, 42)", "(38, 48)", "(8, 23)"))
_SINGLE_AGE = re.compile(r"[0-9]+")
_AGE_RANGE = re.compile(r"\(\s*([0-9]+)\s*,\s*([0-9]+)\s*\)")
_UNKNOWN_GENDERS = ("u", "")
_REQUIRED_FIELDS = ("user_id", "original_image", "face_id")
_SUMMARY_PROBLEMS = 10  # problems shown in full by `Report.summary_lines`


def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _age_bounds(age_string):
    """(low, high) years of a well-formed age string, None for "None"; ValueError if malformed."""
    if age_string == _NO_AGE:
        return None
    if _SINGLE_AGE.fullmatch(age_string):
        return int(age_string), int(age_string)
    match = _AGE_RANGE.fullmatch(age_string)
    if not match:
        raise ValueError(f"malformed age string {age_string!r} "
                         "(expected None, an integer or '(low, high)')")
    low, high = int(match.group(1)), int(match.group(2))
    if low > high:
        raise ValueError(f"malformed age string {age_string!r}: reversed range")
    return low, high


def _group_intervals():
    """Each group's [low, high] years; the oldest is open-ended (an 80-year-old belongs in it)."""
    intervals = [_age_bounds(group) for group in AGE_GROUPS]
    intervals[-1] = (intervals[-1][0], math.inf)
    return tuple(intervals)


_GROUP_INTERVALS = _group_intervals()


def _nearest_group(age):
    """The group whose interval holds `age`, else the nearest by distance to an edge.

    Ties go to the older group: 35 is as far from 32 as from 38 and becomes (38, 43).
    """
    def distance(interval):
        low, high = interval
        return max(low - age, 0, age - high)

    return min(range(len(AGE_GROUPS)), key=lambda c: (distance(_GROUP_INTERVALS[c]), -c))


def age_class(age_string: str, rule: str) -> int | None:
    """The age class (0..7) of an age string under a rule.

    Args:
      age_string: the `age` field of a fold file, e.g. "(25, 32)", "35" or "None".
      rule: "paper" maps only the eight group strings (and the known typo "(25, 23)");
        "nearest" also maps a single age, or a range by its midpoint, to the nearest group.

    Returns:
      The class, or None when the rule does not map this well-formed string.

    Raises:
      ValueError: for a malformed string (e.g. a reversed range) or an unknown rule.
    """
    _check_choice("age rule", rule, AGE_RULES)
    age_string = _AGE_TYPOS.get(age_string, age_string)
    bounds = _age_bounds(age_string)
    if age_string in AGE_GROUPS:
        return AGE_GROUPS.index(age_string)
    if rule == "paper" or bounds is None:
        return None
    return _nearest_group(sum(bounds) / 2)


def gender_class(gender_string: str) -> int:
    """0 for "f", 1 for "m", UNKNOWN for "u" and ""; ValueError for anything else."""
    if gender_string in GENDERS:
        return GENDERS.index(gender_string)
    if gender_string in _UNKNOWN_GENDERS:
        return UNKNOWN
    raise ValueError(f"unknown gender string {gender_string!r} (expected f, m, u or empty)")


def image_path(adience_dir: str, layout: str, user_id: str, face_id: str,
               original_image: str) -> str:
    """The face crop of one row in a layout of the download ("aligned" or "faces")."""
    _check_choice("layout", layout, LAYOUTS)
    name = f"{_IMAGE_PREFIXES[layout]}.{face_id}.{original_image}"
    return os.path.join(adience_dir, layout, user_id, name)


@dataclasses.dataclass(frozen=True)
class Example:
    """One face of a fold file, labelled. `source` is "fold_0_data.txt:17" (header = line 1)."""

    source: str
    fold: int
    user_id: str
    face_id: str
    original_image: str
    age: str  # the raw age string
    age_class: int  # 0..7 or UNKNOWN
    gender_class: int  # 0, 1 or UNKNOWN
    path: str  # the image file in the chosen layout

    def label(self, task):
        """The class this example has for a task ("age" or "gender")."""
        _check_choice("task", task, TASKS)
        return self.age_class if task == "age" else self.gender_class


@dataclasses.dataclass
class Report:
    """What reading the fold files kept, dropped and found wrong.

    Every data row is counted once: rows == kept + sum(dropped) + duplicates + problem_count().
    """

    rows: int = 0
    kept: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    duplicates: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def problem_count(self) -> int:
        return len(self.problems)

    def summary_lines(self) -> list[str]:
        """Counts, rows dropped by label string (most first), and the first problems."""
        lines = [f"{self.rows} rows read: {self.kept} kept, {sum(self.dropped.values())} "
                 f"dropped by label, {self.duplicates} duplicates, "
                 f"{self.problem_count()} problems"]
        for (what, string), count in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"dropped {what} {string!r}: {count}")
        lines += [f"problem: {problem}" for problem in self.problems[:_SUMMARY_PROBLEMS]]
        if self.problem_count() > _SUMMARY_PROBLEMS:
            lines.append(f"... and {self.problem_count() - _SUMMARY_PROBLEMS} more problems")
        return lines


def _data_lines(adience_dir, file_name):
    """(line number, fields) of each data row of one fold file, after checking its header."""
    path = os.path.join(adience_dir, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Adience fold file not found: {path} (expected the {FOLDS} fold files "
            f"{FOLD_FILE.format(0)} .. {FOLD_FILE.format(FOLDS - 1)} of the Adience "
            f"benchmark in {adience_dir})")
    # Split on "\n" only (str.splitlines would also split on rarer characters inside a field).
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    if lines[-1] == "":
        lines.pop()  # a trailing newline ends the last row; it does not start another
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        raise ValueError(f"{path}: header is not the Adience fold format; expected the "
                         f"tab-separated columns {' '.join(COLUMNS)}")
    for number, line in enumerate(lines[1:], start=2):
        yield number, line.split("\t")


def _parse_row(fields, source, fold, adience_dir, layout, task, age_rule):
    """(Example, drop) for one row; drop is (what, string) when the task has no label for it.

    Raises:
      ValueError: the row is malformed; the message says how (without the source).
    """
    if len(fields) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} tab-separated fields, found {len(fields)}")
    row = dict(zip(COLUMNS, fields))
    for column in _REQUIRED_FIELDS:
        if not row[column]:
            raise ValueError(f"empty {column}")
    age, gender = age_class(row["age"], age_rule), gender_class(row["gender"])
    if row["age"] not in KNOWN_AGE_STRINGS:
        raise ValueError(f"unknown age string {row['age']!r} (not one of the age strings of "
                         f"the published fold files)")
    example = Example(
        source=source, fold=fold, user_id=row["user_id"], face_id=row["face_id"],
        original_image=row["original_image"], age=row["age"],
        age_class=UNKNOWN if age is None else age, gender_class=gender,
        path=image_path(adience_dir, layout, row["user_id"], row["face_id"],
                        row["original_image"]))
    if example.label(task) != UNKNOWN:
        return example, None
    return example, (task, row["age"] if task == "age" else row["gender"])


def read_examples(adience_dir, task="age", age_rule="paper", layout="aligned", strict=False,
                  check_images=True) -> tuple[list[Example], Report]:
    """Reads the five fold files into labelled examples, in fold then line order.

    Rows without a label for the task are dropped and counted by their string. Malformed rows,
    age strings the published files do not have (`KNOWN_AGE_STRINGS`) and missing images are
    problems ("fold_0_data.txt:17: ..."), counted and skipped; duplicate rows
    (same user_id, face_id, original_image) are kept once. Images are looked for only for
    rows that would be kept.

    Args:
      adience_dir: the directory holding fold_{0..4}_data.txt (and the image layouts).
      task: "age" or "gender": which label a row must have to be kept.
      age_rule: "paper" or "nearest" (see `age_class`).
      layout: "aligned" or "faces": where `Example.path` points.
      strict: raise ValueError at the first problem instead of reporting it.
      check_images: report rows whose image file is missing.

    Returns:
      (examples, report).
    """
    _check_choice("task", task, TASKS)
    _check_choice("age rule", age_rule, AGE_RULES)
    _check_choice("layout", layout, LAYOUTS)
    examples, report, seen = [], Report(), set()

    def problem(message):
        if strict:
            raise ValueError(message)
        report.problems.append(message)

    for fold in range(FOLDS):
        file_name = FOLD_FILE.format(fold)
        for number, fields in _data_lines(adience_dir, file_name):
            report.rows += 1
            source = f"{file_name}:{number}"
            try:
                example, drop = _parse_row(fields, source, fold, adience_dir, layout, task,
                                           age_rule)
            except ValueError as error:
                problem(f"{source}: {error}")
                continue
            key = (example.user_id, example.face_id, example.original_image)
            if key in seen:
                report.duplicates += 1
            elif drop:
                report.dropped[drop] += 1
            elif check_images and not os.path.isfile(example.path):
                problem(f"{source}: image not found: {example.path}")
            else:
                examples.append(example)
            seen.add(key)
    report.kept = len(examples)
    return examples, report
