"""The documents against the program: every option `coldbrew --help` lists is in the README's
options table, has its section in docs/configuration.md and its COLDBREW_<OPTION> variable in
that page's table, and nothing is documented that the program does not have.

The options come from a real `python -m coldbrew --help`, not from the option table in
config.py, so that what users read in --help is what the documents are held to.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
DEPLOYMENT = (ROOT / "docs" / "deployment.md").read_text()

# Not settings: no environment variable, no row in the README's table.
ACTIONS = {"--help", "--version"}


def help_options():
    """{long flag: (short flags, metavar or None)} for every option `coldbrew --help` shows."""
    result = subprocess.run(
        [sys.executable, "-m", "coldbrew", "--help"],
        env={**os.environ, "COLUMNS": "100"}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    options = {}
    # Invocation lines are indented by two spaces; help text, by more.
    for line in result.stdout.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if not match:
            continue
        shorts, long_flag, metavar = [], None, None
        for part in match.group(1).split(", "):
            flag, _, value = part.partition(" ")
            if flag.startswith("--"):
                long_flag, metavar = flag, value or None
            else:
                shorts.append(flag)
        options[long_flag] = (tuple(shorts), metavar)
    assert "--bind" in options and "--limit-request-body" in options, result.stdout
    return options


OPTIONS = help_options()
SETTINGS = {flag: spec for flag, spec in OPTIONS.items() if flag not in ACTIONS}


def as_documented(long_flag, shorts, metavar):
    """How the documents name an option: `-b`, `--bind HOST:PORT`."""
    names = [f"`{short}`" for short in shorts]
    names.append(f"`{long_flag} {metavar}`" if metavar else f"`{long_flag}`")
    return ", ".join(names)


def env_variable(long_flag):
    return "COLDBREW_" + long_flag[2:].upper().replace("-", "_")


def table_rows(text, header):
    """The rows (lists of cells, `\\|` unescaped) of the Markdown table under ``header``."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return rows


def section(text, heading):
    """The text of a `## heading` section."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_every_option_is_in_the_readme_table():
    documented = [row[0] for row in table_rows(README, "| Option | Default | What it does |")]
    expected = [as_documented(flag, *spec) for flag, spec in SETTINGS.items()]
    assert sorted(set(expected) - set(documented)) == [], "in --help, not in the README's options table"
    assert sorted(set(documented) - set(expected)) == [], "in the README's options table, not in --help"
    assert len(documented) == len(set(documented)), "an option is in the README's table twice"


def test_every_option_has_its_section_in_configuration_md():
    headings = re.findall(r"^### (.+)$", section(CONFIGURATION, "Options"), re.M)
    headings.remove("Other flags")
    expected = [as_documented(flag, *spec) for flag, spec in SETTINGS.items()]
    assert sorted(set(expected) - set(headings)) == [], "in --help, without a section in configuration.md"
    assert sorted(set(headings) - set(expected)) == [], "a section in configuration.md, not in --help"
    for flag in ACTIONS:
        assert f"`{flag}`" in section(CONFIGURATION, "Options").split("### Other flags", 1)[1], flag


@pytest.mark.parametrize("long_flag", sorted(SETTINGS))
def test_every_options_section_names_its_variable(long_flag):
    heading = f"### {as_documented(long_flag, *SETTINGS[long_flag])}\n"
    body = CONFIGURATION.split(heading, 1)[1].split("\n### ", 1)[0]
    assert f"| Environment | `{env_variable(long_flag)}`" in body, body[:300]


def test_every_option_is_in_the_variable_table():
    rows = table_rows(CONFIGURATION, "| Variable | Option |")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert len(documented) == len(rows), "a variable is in the table twice"
    expected = {env_variable(flag): flag for flag in SETTINGS}
    expected["COLDBREW_APP"] = None
    assert sorted(set(expected) - set(documented)) == [], "options whose variable is not in the table"
    assert sorted(set(documented) - set(expected)) == [], "variables in the table for no option"
    for variable, flag in expected.items():
        if flag is not None:
            _, metavar = SETTINGS[flag]
            assert documented[variable].startswith(f"`{flag} {metavar}`" if metavar else f"`{flag}`"), variable
    # And the table has no rival: one row for COLDBREW_<OPTION> among the variables read.
    assert CONFIGURATION.count("| `COLDBREW_<OPTION>` |") == 1


def test_the_documented_variables_are_the_ones_read():
    """What the documents derive from an option's name is what config.py looks up."""
    from coldbrew.config import _OPTIONS, env_name

    read = {"--" + next(f for f in flags if f.startswith("--"))[2:]: env_name(dest)
            for dest, flags, *_ in _OPTIONS}
    assert read == {flag: env_variable(flag) for flag in SETTINGS}


def test_a_documented_variable_takes_effect_end_to_end(tmp_path):
    """One documented variable per kind of value, through a real command line that stops early."""
    result = subprocess.run(
        [sys.executable, "-m", "coldbrew", "cli_apps:app"],
        cwd=str(ROOT / "tests" / "apps"),
        env={**os.environ, env_variable("--limit-request-fields"): "0"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "coldbrew: error: COLDBREW_LIMIT_REQUEST_FIELDS: must be at least 1 (got 0)\n"


def test_the_documented_startup_line_is_the_one_written():
    from test_startup import REPORT

    examples = re.findall(r"`(coldbrew \S+ serving WSGI app [^`]+)`", DEPLOYMENT)
    assert examples, "deployment.md shows no startup line"
    for line in examples:
        assert REPORT.search(line), line


def test_the_readme_names_only_examples_the_script_serves():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "serve-example.sh"), "no-such-example"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "usage: bash scripts/serve-example.sh [hello|flask|django|fastapi]\n"
    choices = set(re.search(r"\[(.+)\]", result.stderr).group(1).split("|"))
    named = set(re.findall(r"bash scripts/serve-example\.sh (\w+)", README))
    assert named and named <= choices, named
    for name in named - {"hello"}:
        assert (ROOT / "examples" / f"{name}_app.py").exists(), name
