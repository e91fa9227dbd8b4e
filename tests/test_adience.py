"""The fold files and label rules, checked against the real Adience fold files (no images)."""

import collections
import csv
import dataclasses
import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import REAL_FOLDS
from input import adience

REAL_ROWS = 19370
REAL_USERS = 168

# Every age string of the real files: rows, class under "paper", class under "nearest".
AGE_TABLE = {
    "(25, 32)": (5004, 4, 4), "(0, 2)": (2488, 0, 0), "(38, 43)": (2293, 5, 5),
    "(4, 6)": (2140, 1, 1), "(8, 12)": (2124, 2, 2), "(15, 20)": (1642, 3, 3),
    "(60, 100)": (872, 7, 7), "(48, 53)": (830, 6, 6), "None": (748, None, None),
    "35": (293, None, 5), "13": (168, None, 2), "22": (149, None, 3), "34": (105, None, 4),
    "23": (96, None, 4), "45": (88, None, 5), "(27, 32)": (77, None, 4), "55": (76, None, 6),
    "36": (56, None, 5), "(38, 42)": (46, None, 5), "57": (24, None, 7), "3": (18, None, 1),
    "29": (11, None, 4), "(38, 48)": (6, None, 5), "58": (5, None, 7), "2": (3, None, 0),
    "32": (3, None, 4), "56": (2, None, 6), "(8, 23)": (1, None, 3), "42": (1, None, 5),
    "46": (1, None, 6),
}
CLASS_COUNTS = {"paper": (2488, 2140, 2124, 1642, 5004, 2293, 830, 872),
                "nearest": (2491, 2158, 2292, 1792, 5296, 2783, 909, 901)}
GENDER_COUNTS = {"f": 9372, "m": 8120, "u": 1099, "": 779}
RULE_COLUMN = {"paper": 1, "nearest": 2}


@functools.cache
def read_real(task="age", age_rule="paper"):
    return adience.read_examples(REAL_FOLDS, task=task, age_rule=age_rule, check_images=False)


def raw_rows():
    """The real rows as the csv module reads them: an independent check of our parser."""
    rows = []
    for fold in range(adience.FOLDS):
        with open(REAL_FOLDS / adience.FOLD_FILE.format(fold), newline="") as f:
            rows += csv.DictReader(f, delimiter="\t")
    return rows


def relative(examples, root):
    """Examples with their paths relative to `root`, to compare reads of two directories."""
    return [dataclasses.replace(e, path=os.path.relpath(e.path, root)) for e in examples]


def copy_folds(directory, data_rows=None, newline="\n", trailing_newline=False):
    """Writes the real fold files (or their first `data_rows` rows) into `directory`."""
    for fold in range(adience.FOLDS):
        name = adience.FOLD_FILE.format(fold)
        lines = (REAL_FOLDS / name).read_text().split("\n")
        lines = lines if data_rows is None else lines[:1 + data_rows]
        text = newline.join(lines) + (newline if trailing_newline else "")
        (directory / name).write_bytes(text.encode())
    return directory


def replace_line(directory, fold, line_number, edit):
    """Applies `edit` to the fields of one line (1-based, header = 1) of a fold file."""
    path = directory / adience.FOLD_FILE.format(fold)
    lines = path.read_text().split("\n")
    lines[line_number - 1] = "\t".join(edit(lines[line_number - 1].split("\t")))
    path.write_text("\n".join(lines))


def set_field(column, value):
    def edit(fields):
        fields[adience.COLUMNS.index(column)] = value
        return fields
    return edit


# The label rules.

@pytest.mark.parametrize("age_string", sorted(AGE_TABLE))
def test_every_real_age_string_maps_as_documented_under_both_rules(age_string):
    _, paper, nearest = AGE_TABLE[age_string]
    assert adience.age_class(age_string, "paper") == paper
    assert adience.age_class(age_string, "nearest") == nearest


@pytest.mark.parametrize("rule", adience.AGE_RULES)
def test_the_known_typo_is_read_as_25_32(rule):
    assert adience.age_class("(25, 23)", rule) == adience.AGE_GROUPS.index("(25, 32)")


@pytest.mark.parametrize("age_string, group", [
    ("0", "(0, 2)"), ("3", "(4, 6)"), ("7", "(8, 12)"), ("14", "(15, 20)"), ("24", "(25, 32)"),
    ("35", "(38, 43)"), ("47", "(48, 53)"), ("57", "(60, 100)"), ("99", "(60, 100)"),
    ("130", "(60, 100)"), ("(13, 14)", "(15, 20)"), ("(0, 1)", "(0, 2)")])
def test_nearest_rule_picks_the_nearest_interval_and_breaks_ties_toward_older(age_string, group):
    assert adience.age_class(age_string, "nearest") == adience.AGE_GROUPS.index(group)


@pytest.mark.parametrize("rule", adience.AGE_RULES)
@pytest.mark.parametrize("age_string", [
    "", "(32, 25)", "(25, 32", "25-32", "-3", "3.5", "none", " 35", "(a, b)", "(25, 32, 40)"])
def test_malformed_age_strings_raise(age_string, rule):
    with pytest.raises(ValueError, match="malformed age string"):
        adience.age_class(age_string, rule)


def test_unknown_age_rule_raises():
    with pytest.raises(ValueError, match="unknown age rule"):
        adience.age_class("(25, 32)", "closest")


def test_gender_strings():
    assert [adience.gender_class(g) for g in ("f", "m", "u", "")] == [0, 1, -1, -1]
    assert adience.UNKNOWN == -1
    for bad in ("F", "x", "male", " f"):
        with pytest.raises(ValueError, match="unknown gender string"):
            adience.gender_class(bad)


def test_image_paths_in_both_layouts():
    args = ("/data/adience", "30601258@N03", "1", "10399646885_67c7d20df9_o.jpg")
    assert adience.image_path(args[0], "aligned", *args[1:]) == (
        "/data/adience/aligned/30601258@N03/"
        "landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg")
    assert adience.image_path(args[0], "faces", *args[1:]) == (
        "/data/adience/faces/30601258@N03/"
        "coarse_tilt_aligned_face.1.10399646885_67c7d20df9_o.jpg")
    with pytest.raises(ValueError, match="unknown layout"):
        adience.image_path(args[0], "crops", *args[1:])


# The real fold files.

def test_our_parser_reads_what_csv_reads():
    rows = raw_rows()
    assert len(rows) == REAL_ROWS
    assert len({row["user_id"] for row in rows}) == REAL_USERS
    assert collections.Counter(row["age"] for row in rows) == {
        string: count for string, (count, _, _) in AGE_TABLE.items()}
    assert collections.Counter(row["gender"] for row in rows) == GENDER_COUNTS
    examples, _ = read_real("age", "nearest")
    kept = [row for row in rows if row["age"] != "None"]
    assert [(e.user_id, e.face_id, e.original_image, e.age) for e in examples] == [
        (row["user_id"], row["face_id"], row["original_image"], row["age"]) for row in kept]


@pytest.mark.parametrize("rule", adience.AGE_RULES)
def test_real_age_table_and_class_counts(rule):
    examples, report = read_real("age", rule)
    assert (report.rows, report.duplicates, report.problems) == (REAL_ROWS, 0, [])
    expected_dropped = {("age", string): row[0] for string, row in AGE_TABLE.items()
                        if row[RULE_COLUMN[rule]] is None}
    assert report.dropped == expected_dropped
    for example in examples:
        assert example.age_class == AGE_TABLE[example.age][RULE_COLUMN[rule]]
    counts = collections.Counter(example.age_class for example in examples)
    assert tuple(counts[c] for c in range(len(adience.AGE_GROUPS))) == CLASS_COUNTS[rule]
    assert report.kept == len(examples) == sum(CLASS_COUNTS[rule])
    assert report.kept + sum(report.dropped.values()) == REAL_ROWS


def test_paper_rule_keeps_exactly_the_eight_group_strings():
    examples, report = read_real("age", "paper")
    assert collections.Counter(e.age for e in examples) == {
        group: AGE_TABLE[group][0] for group in adience.AGE_GROUPS}
    assert {string for _, string in report.dropped} == set(AGE_TABLE) - set(adience.AGE_GROUPS)


def test_age_task_keeps_rows_of_unknown_gender():
    examples, _ = read_real("age", "paper")
    assert collections.Counter(e.gender_class for e in examples) == {0: 8571, 1: 7657, -1: 1165}


def test_gender_task_counts_and_keeps_rows_of_unknown_age():
    examples, report = read_real("gender")
    assert report.dropped == {("gender", g): GENDER_COUNTS[g] for g in ("u", "")}
    genders = collections.Counter(e.gender_class for e in examples)
    assert genders == {0: GENDER_COUNTS["f"], 1: GENDER_COUNTS["m"]}
    assert sum(e.age_class == adience.UNKNOWN for e in examples) == 1264
    assert [e.label("gender") for e in examples] == [e.gender_class for e in examples]
    assert [e.label("age") for e in examples] == [e.age_class for e in examples]


def test_every_example_knows_its_fold_and_line_in_file_order():
    examples, _ = read_real("age", "nearest")
    for example in examples:
        assert example.source.startswith(adience.FOLD_FILE.format(example.fold) + ":")
    order = [(e.fold, int(e.source.rsplit(":", 1)[1])) for e in examples]
    assert order == sorted(order) and len(set(order)) == len(order)


def _documented_class(text):
    return None if text == "dropped" else int(text.split()[0])


def test_the_module_docstring_table_is_the_real_table():
    row = re.compile(r"    (None|\d+|\(\d+, \d+\)) +(\d+)  (dropped|\d \S+) +(dropped|\d \S+).*")
    documented, per_rule = {}, {}
    for line in adience.__doc__.splitlines():
        if match := row.fullmatch(line):
            string, rows, paper, nearest = match.groups()
            documented[string] = (int(rows), _documented_class(paper), _documented_class(nearest))
        elif line.split()[:1] in (["paper"], ["nearest"]):
            per_rule[line.split()[0]] = tuple(int(n) for n in line.split()[1:])
    assert documented.pop("(25, 23)") == (0, 4, 4)
    assert documented == AGE_TABLE
    assert per_rule == {rule: counts + (REAL_ROWS - sum(counts),)
                        for rule, counts in CLASS_COUNTS.items()}


# Damaged copies of the fold files.

def test_duplicate_rows_are_kept_once(tmp_path):
    copy_folds(tmp_path)
    path = tmp_path / adience.FOLD_FILE.format(1)
    path.write_text(path.read_text() + "\n" + path.read_text().split("\n")[1])
    examples, report = adience.read_examples(tmp_path, check_images=False)
    real_examples, _ = read_real()
    assert (report.rows, report.duplicates, report.problems) == (REAL_ROWS + 1, 1, [])
    assert relative(examples, tmp_path) == relative(real_examples, REAL_FOLDS)


@pytest.mark.parametrize("edit, message", [
    (lambda fields: fields[:-1], "expected 12 tab-separated fields, found 11"),
    (set_field("face_id", ""), "empty face_id"),
    (set_field("user_id", ""), "empty user_id"),
    (set_field("age", "(32, 25)"), "malformed age string '(32, 25)': reversed range"),
    (set_field("gender", "x"), "unknown gender string 'x'"),
    (set_field("age", "(1, 99)"), "unknown age string '(1, 99)'"),  # well-formed, not Adience's
])
def test_a_bad_row_is_reported_with_file_and_line_and_skipped(tmp_path, edit, message):
    copy_folds(tmp_path, data_rows=4)
    clean, _ = adience.read_examples(tmp_path, check_images=False)
    replace_line(tmp_path, fold=2, line_number=3, edit=edit)
    examples, report = adience.read_examples(tmp_path, check_images=False)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"fold_2_data.txt:3: {message}")
    assert [e.source for e in examples] == [
        e.source for e in clean if e.source != "fold_2_data.txt:3"]
    assert report.rows == report.kept + sum(report.dropped.values()) + report.problem_count()
    with pytest.raises(ValueError) as error:
        adience.read_examples(tmp_path, check_images=False, strict=True)
    assert str(error.value) == report.problems[0]


def test_an_unknown_age_string_is_a_problem_under_the_nearest_rule_too(tmp_path):
    copy_folds(tmp_path, data_rows=4)
    replace_line(tmp_path, fold=0, line_number=2, edit=set_field("age", "(1, 99)"))
    examples, report = adience.read_examples(tmp_path, age_rule="nearest", check_images=False)
    assert report.problems[0].startswith("fold_0_data.txt:2: unknown age string '(1, 99)'")
    assert "fold_0_data.txt:2" not in {e.source for e in examples}  # not mapped to 48-53
    with pytest.raises(ValueError, match=r"fold_0_data.txt:2: unknown age string"):
        adience.read_examples(tmp_path, age_rule="nearest", check_images=False, strict=True)


def test_a_missing_image_is_reported_with_file_and_line(tmp_path):
    copy_folds(tmp_path, data_rows=4)
    clean, _ = adience.read_examples(tmp_path, check_images=False)
    for example in clean:
        os.makedirs(os.path.dirname(example.path), exist_ok=True)
        pathlib.Path(example.path).touch()
    assert adience.read_examples(tmp_path)[1].problems == []
    missing = next(e for e in clean if e.source == "fold_1_data.txt:4")
    os.remove(missing.path)
    examples, report = adience.read_examples(tmp_path)
    assert report.problems == [f"fold_1_data.txt:4: image not found: {missing.path}"]
    assert missing not in examples and len(examples) == len(clean) - 1
    with pytest.raises(ValueError, match=re.escape(report.problems[0])):
        adience.read_examples(tmp_path, strict=True)


def test_faces_layout_points_at_the_coarse_crops(tmp_path):
    examples, _ = adience.read_examples(copy_folds(tmp_path, data_rows=1), layout="faces",
                                        check_images=False)
    assert examples[0].path == str(tmp_path / "faces" / "30601258@N03" /
                                   "coarse_tilt_aligned_face.1.10399646885_67c7d20df9_o.jpg")


def test_a_missing_fold_file_is_named(tmp_path):
    copy_folds(tmp_path, data_rows=1)
    os.remove(tmp_path / "fold_3_data.txt")
    with pytest.raises(FileNotFoundError, match=r"fold_3_data\.txt.*expected"):
        adience.read_examples(tmp_path, check_images=False)


def test_a_wrong_header_is_named(tmp_path):
    copy_folds(tmp_path, data_rows=1)
    replace_line(tmp_path, fold=4, line_number=1, edit=lambda fields: fields[::-1])
    with pytest.raises(ValueError, match=r"fold_4_data\.txt: header"):
        adience.read_examples(tmp_path, check_images=False)


@pytest.mark.parametrize("newline, trailing_newline", [("\r\n", False), ("\n", True),
                                                       ("\r\n", True)])
def test_crlf_and_trailing_newline_parse_the_same(tmp_path, newline, trailing_newline):
    copy_folds(tmp_path, newline=newline, trailing_newline=trailing_newline)
    examples, report = adience.read_examples(tmp_path, check_images=False)
    real_examples, real_report = read_real()
    assert relative(examples, tmp_path) == relative(real_examples, REAL_FOLDS)
    assert report == real_report


def test_summary_names_counts_drops_and_problems(tmp_path):
    copy_folds(tmp_path, data_rows=4)
    replace_line(tmp_path, fold=0, line_number=2, edit=set_field("age", "35"))
    replace_line(tmp_path, fold=0, line_number=3, edit=set_field("gender", "?"))
    _, report = adience.read_examples(tmp_path, check_images=False)
    assert report.summary_lines() == [
        "20 rows read: 18 kept, 1 dropped by label, 0 duplicates, 1 problems",
        "dropped age '35': 1",
        "problem: fold_0_data.txt:3: unknown gender string '?' (expected f, m, u or empty)"]


def test_reading_labels_does_not_import_tensorflow():
    code = "import sys, input.adience, input.splits; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=pathlib.Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.strip() == "False"
