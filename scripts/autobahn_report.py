#!/usr/bin/env python3
"""Summarise an Autobahn|Testsuite fuzzingclient report (index.json and the case files).

    python3 scripts/autobahn_report.py [DIR] [--groups] [--markdown] [--agent NAME]

DIR is the report directory (default .autobahn/reports). Prints one line per case group
(a section, e.g. "6 UTF-8 Handling"; with --groups, each subsection such as "6.4") with
how many cases were OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED and FAILED, then, for
every case that was not plainly OK, its id, description, expectation and what the report
says happened, and how permessage-deflate was offered and answered in sections 12
and 13. --markdown prints the per-section table as Markdown instead.

A case's verdict is its "behavior" (what the HTML report's table shows); a verdict other
than the four good or neutral ones (e.g. NO_CLOSE) counts as FAILED. The closing handshake
is judged apart ("behaviorClose"): FAILED or UNCLEAN there is a failure too; WRONG CODE and
FAILED BY CLIENT are listed as notes.

Exit status: 0 when nothing failed; 1 when a case failed (verdict or closing), or when a
case of sections 12 or 13 is UNIMPLEMENTED (coldbrew negotiates permessage-deflate, so
they must run); 2 when the report cannot be read.
"""

import argparse
import json
import os
import re
import sys

SECTIONS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "8": "Misc",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
CLOSE_FAILURES = ("FAILED", "UNCLEAN")
CLOSE_NOTES = ("WRONG CODE", "FAILED BY CLIENT")
MUST_BE_IMPLEMENTED = ("12", "13")


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def group_of(case_id, fine):
    parts = case_id.split(".")
    if fine and len(parts) == 3:
        return ".".join(parts[:2])
    return parts[0]


def verdict(behavior):
    return behavior if behavior in VERDICTS else "FAILED"


def clip(value, limit=300):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def plain(html):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html or "")).strip()


def compress_ids(ids):
    """["12.1.1", "12.1.2", "12.1.3", "13.2.5"] -> "12.1.1-12.1.3, 13.2.5"."""
    ids = sorted(ids, key=case_key)
    runs = []
    for case_id in ids:
        key = case_key(case_id)
        if runs and key[:-1] == case_key(runs[-1][1])[:-1] and key[-1] == case_key(runs[-1][1])[-1] + 1:
            runs[-1][1] = case_id
        else:
            runs.append([case_id, case_id])
    return ", ".join(a if a == b else f"{a}-{b}" for a, b in runs)


def fail(message):
    print(f"autobahn_report: {message}", file=sys.stderr)
    sys.exit(2)


def header(http_text, name):
    for line in (http_text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


def deflate_negotiation(directory, cases):
    """{(offered, answered): [subsection, ...]} from the first case of each 12.G and 13.G."""
    firsts = {}
    for case_id in sorted(cases, key=case_key):
        if case_id.split(".")[0] in MUST_BE_IMPLEMENTED:
            firsts.setdefault(group_of(case_id, True), case_id)
    pairs = {}
    for group, case_id in firsts.items():
        d = case_details(directory, cases[case_id])
        if not d:
            continue
        pair = (header(d.get("httpRequest"), "sec-websocket-extensions"),
                header(d.get("httpResponse"), "sec-websocket-extensions"))
        pairs.setdefault(pair, []).append(group)
    return pairs


def compress_groups(groups):
    return ", ".join(sorted(groups, key=case_key))


def load(directory, agent):
    index_path = os.path.join(directory, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {index_path}: {e}")
    if agent is None:
        if len(index) != 1:
            fail(f"{index_path} has agents {sorted(index)}: pick one with --agent")
        agent = next(iter(index))
    if agent not in index:
        fail(f"no agent {agent!r} in {index_path} (agents: {sorted(index)})")
    return agent, index[agent]


def case_details(directory, entry):
    try:
        with open(os.path.join(directory, entry["reportfile"])) as f:
            return json.load(f)
    except (OSError, ValueError, KeyError):
        return {}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default=".autobahn/reports")
    p.add_argument("--agent", help="the agent in index.json (default: the only one)")
    p.add_argument("--groups", action="store_true", help="one line per subsection (6.4) rather than per section (6)")
    p.add_argument("--markdown", action="store_true", help="print the per-section counts as a Markdown table")
    args = p.parse_args()

    agent, cases = load(args.dir, args.agent)
    if not cases:
        print(f"autobahn_report: no cases for {agent} in {args.dir}/index.json", file=sys.stderr)
        return 2

    groups = {}
    for case_id, entry in cases.items():
        counts = groups.setdefault(group_of(case_id, args.groups), dict.fromkeys(VERDICTS, 0))
        counts[verdict(entry.get("behavior"))] += 1
    totals = dict.fromkeys(VERDICTS, 0)
    for counts in groups.values():
        for v in VERDICTS:
            totals[v] += counts[v]

    def name(group):
        return SECTIONS.get(group, "") if "." not in group else ""

    ordered = sorted(groups, key=case_key)
    if args.markdown:
        print("| section | cases | " + " | ".join(VERDICTS) + " |")
        print("|---|---:|" + "---:|" * len(VERDICTS))
        for g in ordered:
            counts = groups[g]
            print(f"| {g} {name(g)} | {sum(counts.values())} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
        print(f"| **all** | {sum(totals.values())} | " + " | ".join(str(totals[v]) for v in VERDICTS) + " |")
        return 0

    width = max(len(f"{g} {name(g)}") for g in ordered + ["all"])
    header = f"{'group':<{width}}  {'cases':>5}  " + "  ".join(f"{v:>13}" for v in VERDICTS)
    print(f"Autobahn fuzzingclient results for {agent} ({args.dir}/index.json)")
    print(header)
    for g in ordered:
        counts = groups[g]
        label = f"{g} {name(g)}".strip()
        print(f"{label:<{width}}  {sum(counts.values()):>5}  " + "  ".join(f"{counts[v]:>13}" for v in VERDICTS))
    print(f"{'all':<{width}}  {sum(totals.values()):>5}  " + "  ".join(f"{totals[v]:>13}" for v in VERDICTS))

    failed, close_failed, non_strict, close_notes, informational, unimplemented = [], [], [], [], [], []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        behavior, closing = entry.get("behavior"), entry.get("behaviorClose")
        v = verdict(behavior)
        if v == "FAILED":
            failed.append(case_id)
        elif v == "NON-STRICT":
            non_strict.append(case_id)
        elif v == "INFORMATIONAL":
            informational.append(case_id)
        elif v == "UNIMPLEMENTED":
            unimplemented.append(case_id)
        if v != "UNIMPLEMENTED":
            if closing in CLOSE_FAILURES:
                close_failed.append(case_id)
            elif closing in CLOSE_NOTES:
                close_notes.append(case_id)

    def describe(case_id, label):
        entry = cases[case_id]
        d = case_details(args.dir, entry)
        print(f"\n{label} {case_id}: behavior {entry.get('behavior')}, closing {entry.get('behaviorClose')}, "
              f"close code {entry.get('remoteCloseCode')}, {entry.get('duration')} ms")
        if d:
            print(f"  description: {plain(d.get('description'))}")
            print(f"  expectation: {plain(d.get('expectation'))}")
            print(f"  result:      {d.get('result')}")
            print(f"  closing:     {d.get('resultClose')}")
            print(f"  expected:    {clip(d.get('expected'))}")
            print(f"  received:    {clip(d.get('received'))}")
            print(f"  expected close: {clip(d.get('expectedClose'))}; closed by fuzzer: {d.get('closedByMe')}, "
                  f"failed by fuzzer: {d.get('failedByMe')}, dropped by fuzzer: {d.get('droppedByMe')}, "
                  f"clean: {d.get('wasClean')} {d.get('wasNotCleanReason') or ''}".rstrip())
            print(f"  coldbrew sent close {d.get('remoteCloseCode')} {d.get('remoteCloseReason')!r}; "
                  f"fuzzer sent close {d.get('localCloseCode')} {d.get('localCloseReason')!r}")
        else:
            print(f"  (no case file {entry.get('reportfile')} in {args.dir})")

    for case_id in failed:
        describe(case_id, "FAILED")
    for case_id in close_failed:
        if case_id not in failed:
            describe(case_id, "FAILED (closing)")
    for case_id in non_strict:
        describe(case_id, "NON-STRICT")
    for case_id in close_notes:
        if case_id not in failed and case_id not in non_strict:
            describe(case_id, f"NOTE (closing {cases[case_id].get('behaviorClose')})")
    negotiation = deflate_negotiation(args.dir, cases)
    if negotiation:
        print("\npermessage-deflate negotiation (first case of each compression group):")
        for (offer, answer), groups_ in negotiation.items():
            print(f"  {compress_groups(groups_)}: offered {offer!r}")
            print(f"  {' ' * len(compress_groups(groups_))}  answered {answer!r}" if answer else
                  f"  {' ' * len(compress_groups(groups_))}  answered with no Sec-WebSocket-Extensions (declined)")
    if informational:
        print(f"\nINFORMATIONAL (no verdict by design): {compress_ids(informational)}")
    if unimplemented:
        print(f"UNIMPLEMENTED: {compress_ids(unimplemented)}")

    must = [c for c in unimplemented if c.split(".")[0] in MUST_BE_IMPLEMENTED]
    problems = []
    if failed:
        problems.append(f"{len(failed)} FAILED")
    extra_close = [c for c in close_failed if c not in failed]
    if extra_close:
        problems.append(f"{len(extra_close)} failed their closing handshake")
    if must:
        problems.append(f"{len(must)} compression cases UNIMPLEMENTED (coldbrew offers permessage-deflate)")
    print()
    if problems:
        print(f"autobahn: NOT CONFORMANT: {'; '.join(problems)}")
        return 1
    print(f"autobahn: conformant: {totals['OK']} OK, {totals['NON-STRICT']} NON-STRICT, "
          f"{totals['INFORMATIONAL']} INFORMATIONAL, {totals['UNIMPLEMENTED']} UNIMPLEMENTED of {sum(totals.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
