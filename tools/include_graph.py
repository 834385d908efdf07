#!/usr/bin/env python3
"""Folder-level include graph of src/: edges with counts, cycles, and backend leaks.

Reads every `#include "folder/..."` line of the C++/CUDA files under src/ (.h .cpp .cu .cuh) and
prints one line per edge `from -> to  N` (N = number of include lines; includes inside the same
folder are not edges). It then checks the layering rule of docs/architecture.md:

  - no cycle between folders;
  - no folder above ops/ that is meant to be device-agnostic (model/, train/, data/, io/)
    includes a backend (cpu/ or cuda/) directly.

A backend reached only through another folder (train -> gpu -> cuda) is printed as a warning.
Exit status: 1 when a cycle or a forbidden edge exists, else 0; `--allow-current` only reports
(exit 0), for today's tree with its known gpu <-> train loop. `--files` lists, under each edge,
the files that make it.

Usage: tools/include_graph.py [--allow-current] [--files] [--src DIR]
"""

import argparse
import collections
import os
import re
import sys

EXTENSIONS = (".h", ".cpp", ".cu", ".cuh")
BACKENDS = ("cpu", "cuda")
# Folders that must never include a backend (the model is written once, over device-agnostic
# views; style guide principle 6).
NO_BACKEND = ("model", "train", "data", "io")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/[^"]+"')


def read_edges(src):
    """(from, to) -> [(file, line number, included path)] for every cross-folder include."""
    folders = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    edges = collections.defaultdict(list)
    for folder in folders:
        for root, _, files in os.walk(os.path.join(src, folder)):
            for name in sorted(files):
                if not name.endswith(EXTENSIONS):
                    continue
                path = os.path.join(root, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        m = INCLUDE_RE.match(line)
                        if not m or m.group(1) not in folders or m.group(1) == folder:
                            continue
                        target = line.split('"')[1]
                        edges[(folder, m.group(1))].append(
                            (os.path.relpath(path, os.path.dirname(src)), number, target))
    return folders, edges


def strongly_connected(folders, adjacency):
    """Tarjan's algorithm: the strongly connected components with more than one folder."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adjacency[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in folders:
        if v not in index:
            visit(v)
    return result


def shortest_path(adjacency, start, goal, allowed=None):
    """Breadth-first path start -> ... -> goal (through `allowed` folders only, if given)."""
    previous = {start: None}
    queue = collections.deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(adjacency[v]):
            if w == goal:
                path = [w, v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1]
            if w not in previous and (allowed is None or w in allowed):
                previous[w] = v
                queue.append(w)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-current", action="store_true",
                        help="report cycles and forbidden edges but exit 0")
    parser.add_argument("--files", action="store_true", help="list the includes of each edge")
    parser.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    args = parser.parse_args()
    src = os.path.normpath(args.src)

    folders, edges = read_edges(src)
    adjacency = {f: set() for f in folders}
    for a, b in edges:
        adjacency[a].add(b)

    print(f"folder -> folder edges under {os.path.basename(src)}/ (count = include lines):")
    for (a, b), includes in sorted(edges.items()):
        print(f"  {a:>5} -> {b:<5} {len(includes):3d}")
        if args.files:
            for path, number, target in includes:
                print(f"          {path}:{number}: {target}")
    isolated = [f for f in folders if not any(f in e for e in edges)]
    if isolated:
        print("  (no edges: " + ", ".join(isolated) + ")")

    errors = 0
    for component in strongly_connected(folders, adjacency):
        start = component[0]
        cycle = [start] + shortest_path(adjacency, start, start, set(component))[1:]
        print("ERROR cycle: " + " -> ".join(cycle) + "   (strongly connected: " +
              ", ".join(component) + ")")
        errors += 1
    for a in NO_BACKEND:
        for b in BACKENDS:
            if (a, b) in edges:
                print(f"ERROR forbidden: {a}/ includes {b}/ ({len(edges[(a, b)])} lines; "
                      f"first {edges[(a, b)][0][0]}:{edges[(a, b)][0][1]})")
                errors += 1
            elif a in adjacency:
                path = shortest_path(adjacency, a, b, set(folders) - set(BACKENDS) - {"ops"})
                if path:
                    print(f"warning: {a}/ reaches {b}/ through another folder: "
                          + " -> ".join(path))
    if errors:
        verdict = "reported only (--allow-current)" if args.allow_current else "failing"
        print(f"{errors} problem(s), {verdict}")
    else:
        print("ok: no cycle, no backend include above ops/")
    return 1 if errors and not args.allow_current else 0


if __name__ == "__main__":
    sys.exit(main())
