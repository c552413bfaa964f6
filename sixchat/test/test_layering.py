"""
The layers of the package, checked from the source: a sans-IO module that imports Twisted
(directly or through any sixchat module it imports), or a lower layer that imports a higher
one, fails here, naming the import. docs/development.md describes the same table.

The import graph is read with C{ast}, without importing anything, and counts every import
statement: at module level, inside functions and under C{if TYPE_CHECKING:} alike. Importing
C{a.b.c} counts as importing C{a} and C{a.b} too, because their C{__init__} runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from twisted.trial import unittest

# The layer table, low to high. A module may import its own layer and lower ones.
# Patterns: "a.b" is the module a.b and everything under it; "=a" is the module a alone;
# "*.tap" is every module whose last part is "tap". A suffix pattern wins over a prefix one,
# and a longer prefix over a shorter one. A module under sixchat/ that no pattern matches
# fails the test: add it to the table.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "sans-IO codec",
        (
            "=sixchat",
            "sixchat.errors",
            "sixchat.xmlcodec",
            "sixchat.stanzas",
            "sixchat.stanza_fastpaths",
            "sixchat.filetransfer",
            "sixchat.record",
            "sixchat.keyschedule",
            "sixchat.groups",
            "sixchat.sigalgs",
        ),
    ),
    ("identity and trust", ("sixchat.identity", "sixchat.trust", "sixchat.pki", "sixchat.netaddr")),
    (
        "sans-IO handshake and connection",
        ("sixchat.handshake", "sixchat.handshake_fastpaths", "sixchat.connection", "sixchat.sync"),
    ),
    (
        "Twisted adapters",
        (
            "sixchat.protocol",
            "sixchat.session",
            "sixchat.flow",
            "sixchat.keepalive",
            "sixchat.peers",
            "sixchat.listener",
        ),
    ),
    ("services", ("sixchat.agent", "sixchat.irp", "sixchat._sqlite")),
    (
        "edges",
        (
            "sixchat.cli",
            "*.tap",
            "=sixchat.twistd",
            "sixchat.bench",
            "sixchat.testing",
            "sixchat.web",
            "twisted.plugins",
        ),
    ),
)
#: Layers whose modules must not import Twisted, directly or through sixchat modules.
SANS_IO_LAYERS = ("sans-IO codec", "sans-IO handshake and connection")
#: (importer, imported) pairs forbidden even within a layer: the agent may use the
#: registry client, never the other way round.
FORBIDDEN = (("sixchat.irp", "sixchat.agent"),)
#: Not part of the layering: tests may import anything.
EXEMPT = ("sixchat.test",)
#: The only modules outside the tests that may import them (the benchmarks reuse the
#: throwaway PostgreSQL cluster of sixchat.test.pg, guarded by an ImportError).
MAY_IMPORT_TESTS = ("sixchat.bench",)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _matches(pattern: str, module: str) -> bool:
    if pattern.startswith("="):
        return module == pattern[1:]
    if pattern.startswith("*."):
        return module.rsplit(".", 1)[-1] == pattern[2:]
    return module == pattern or module.startswith(pattern + ".")


def _specificity(pattern: str) -> tuple[int, int]:
    return (1 if pattern.startswith("*.") else 0, len(pattern))


def layer_of(module: str, layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    """The index of C{module}'s layer in C{layers}, or None if no pattern matches it."""
    best: tuple[tuple[int, int], int] | None = None
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if _matches(pattern, module):
                candidate = (_specificity(pattern), index)
                if best is None or candidate[0] > best[0]:
                    best = candidate
    return None if best is None else best[1]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package (tests aside) and of the twistd plugin, by name."""
    files = list((root / "sixchat").rglob("*.py")) + list((root / "twisted/plugins").glob("*.py"))
    modules = {_module_name(path, root): path for path in files}
    return {name: path for name, path in modules.items() if not _exempt(name)}


def _exempt(module: str) -> bool:
    return any(_matches(pattern, module) for pattern in EXEMPT)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imports_of(module: str, source: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """
    What C{source} (the text of C{module}) imports: the modules named, their parent packages,
    and for C{from p import x} the module C{p.x} when C{known} has it.
    """
    known = set(known)
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            targets += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        else:
            continue
        for target in targets:
            for name in _with_parents(target):
                if name != module:
                    found.append(Import(module, name, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    modules = source_modules(root)
    known = set(modules)
    return {
        name: imports_of(name, path.read_text("utf-8"), path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def _is_twisted(module: str) -> bool:
    return module == "twisted" or (
        module.startswith("twisted.") and not module.startswith("twisted.plugins")
    )


def violations(
    graph: Mapping[str, list[Import]],
    layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS,
    sans_io: Iterable[str] = SANS_IO_LAYERS,
    forbidden: Iterable[tuple[str, str]] = FORBIDDEN,
) -> list[str]:
    """Everything wrong with C{graph} (module -> its imports), one sentence each."""
    names = [name for name, _ in layers]
    sans_io_indexes = {names.index(name) for name in sans_io}
    problems: list[str] = []
    internal = set(graph)

    for module in sorted(graph):
        if layer_of(module, layers) is None:
            problems.append(f"{module} is in no layer: add it to the layer table in {__name__}")
    for module in sorted(graph):
        mine = layer_of(module, layers)
        if mine is None:
            continue
        for imp in graph[module]:
            if _exempt(imp.imported):
                if any(_matches(pattern, module) for pattern in MAY_IMPORT_TESTS):
                    continue
                problems.append(f"{module} imports the tests ({imp.imported}) on line {imp.line}")
                continue
            if imp.imported not in internal:
                continue
            theirs = layer_of(imp.imported, layers)
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{module} (layer {names[mine]!r}) imports {imp.imported} "
                    f"(higher layer {names[theirs]!r}) on line {imp.line}"
                )
            for importer, imported in forbidden:
                if _matches(importer, module) and _matches(imported, imp.imported):
                    problems.append(
                        f"{module} imports {imp.imported} on line {imp.line}: "
                        f"{importer} must not import {imported}"
                    )
        if mine in sans_io_indexes:
            path = _twisted_path(module, graph)
            if path is not None:
                problems.append(f"sans-IO {module} imports Twisted: {' -> '.join(path)}")
    return problems


def _twisted_path(start: str, graph: Mapping[str, list[Import]]) -> list[str] | None:
    """The first chain of imports from C{start} that reaches Twisted, with line numbers."""
    seen = {start}
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        module, path = stack.pop()
        for imp in graph.get(module, ()):
            step = f"{imp.imported} (line {imp.line})"
            if _is_twisted(imp.imported):
                return [*path, step]
            if imp.imported in graph and imp.imported not in seen:
                seen.add(imp.imported)
                stack.append((imp.imported, [*path, step]))
    return None


class LayeringTests(unittest.SynchronousTestCase):
    def test_the_package_keeps_its_layers(self) -> None:
        graph = import_graph()
        self.assertIn("sixchat.connection", graph)  # the scan found the package
        self.assertIn("twisted.plugins.sixchat_plugin", graph)
        problems = violations(graph)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_sans_io_modules_are_where_the_table_says(self) -> None:
        names = [name for name, _ in LAYERS]
        for module in (
            "sixchat.errors",
            "sixchat.record",
            "sixchat.handshake",
            "sixchat.connection",
        ):
            layer = layer_of(module)
            assert layer is not None
            self.assertIn(names[layer], SANS_IO_LAYERS, module)


class PackagingTests(unittest.SynchronousTestCase):
    """setup.cfg names every package: a package missing there is absent from a wheel,
    which the editable install used by tests and CI would never show."""

    def test_setup_cfg_lists_every_package(self) -> None:
        import configparser

        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = set(config["options"]["packages"].split())
        found = {
            ".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / "sixchat").rglob("__init__.py")
        }
        self.assertIn("sixchat.agent", found)  # the scan found the packages
        self.assertEqual(sorted(found - listed), [], "packages missing from setup.cfg")
        self.assertEqual(sorted(listed - found - {"twisted.plugins"}), [], "listed, not found")


def _graph(edges: Mapping[str, list[str]]) -> dict[str, list[Import]]:
    return {
        m: [Import(m, i, n + 1) for n, i in enumerate(imported)] for m, imported in edges.items()
    }


class SelfCheckTests(unittest.SynchronousTestCase):
    """The checker itself, on made-up graphs: it must be able to fail."""

    def test_clean_graph(self) -> None:
        graph = _graph(
            {
                "sixchat.errors": [],
                "sixchat.connection": ["sixchat.errors", "cryptography"],
                "sixchat.protocol": ["sixchat.connection", "twisted.internet"],
                "sixchat.agent.service": ["sixchat.irp.client", "sixchat.protocol"],
                "sixchat.irp.client": ["sixchat.protocol"],
                "sixchat.agent.tap": ["sixchat.agent.service"],
            }
        )
        self.assertEqual(violations(graph), [])

    def test_sans_io_importing_twisted_directly(self) -> None:
        graph = _graph({"sixchat.record": ["sixchat.errors", "twisted.internet.defer"]})
        self.assertEqual(
            violations(graph),
            [
                "sans-IO sixchat.record imports Twisted: sixchat.record -> "
                "twisted.internet.defer (line 2)"
            ],
        )

    def test_sans_io_importing_twisted_through_another_module(self) -> None:
        graph = _graph(
            {
                "sixchat.handshake": ["sixchat.trust"],
                "sixchat.trust": ["sixchat.trust.files"],
                "sixchat.trust.files": ["twisted.python.filepath"],
            }
        )
        self.assertEqual(
            violations(graph),
            [
                "sans-IO sixchat.handshake imports Twisted: sixchat.handshake -> "
                "sixchat.trust (line 1) -> sixchat.trust.files (line 1) -> "
                "twisted.python.filepath (line 1)"
            ],
        )

    def test_lower_layer_importing_higher(self) -> None:
        graph = _graph({"sixchat.stanzas": ["sixchat.protocol"], "sixchat.protocol": []})
        [problem] = violations(graph)
        self.assertIn("sixchat.stanzas (layer 'sans-IO codec') imports sixchat.protocol", problem)
        self.assertIn("'Twisted adapters'", problem)

    def test_identity_below_handshake(self) -> None:
        graph = _graph({"sixchat.identity": ["sixchat.handshake"], "sixchat.handshake": []})
        self.assertEqual(len(violations(graph)), 1)

    def test_registry_must_not_import_the_agent(self) -> None:
        graph = _graph({"sixchat.irp.server": ["sixchat.agent.store"], "sixchat.agent.store": []})
        self.assertEqual(
            violations(graph),
            [
                "sixchat.irp.server imports sixchat.agent.store on line 1: "
                "sixchat.irp must not import sixchat.agent"
            ],
        )

    def test_library_importing_tests(self) -> None:
        graph = _graph(
            {"sixchat.testing": ["sixchat.test.certs"], "sixchat.bench.registry": ["sixchat.test"]}
        )
        self.assertEqual(
            violations(graph),
            ["sixchat.testing imports the tests (sixchat.test.certs) on line 1"],
        )

    def test_unknown_module(self) -> None:
        graph = _graph({"sixchat.newthing": []})
        self.assertEqual(
            violations(graph),
            [f"sixchat.newthing is in no layer: add it to the layer table in {__name__}"],
        )

    def test_patterns(self) -> None:
        names = [name for name, _ in LAYERS]

        def name(module: str) -> str | None:
            layer = layer_of(module)
            return None if layer is None else names[layer]

        self.assertEqual(name("sixchat"), "sans-IO codec")
        self.assertEqual(name("sixchat.trust.crl"), "identity and trust")
        self.assertEqual(name("sixchat.agent.store.pins"), "services")
        self.assertEqual(name("sixchat.agent.tap"), "edges")
        self.assertEqual(name("sixchat.irp.tap"), "edges")
        self.assertIsNone(name("sixchat.trustee"))
        self.assertIsNone(name("sixchat.other"))

    def test_reading_imports(self) -> None:
        source = (
            "import sixchat.agent.service\n"
            "from sixchat import sigalgs, errors as e\n"
            "from . import record\n"
            "def later():\n"
            "    from twisted.internet import reactor\n"
        )
        known = {"sixchat.sigalgs", "sixchat.errors", "sixchat.record"}
        found = {(i.imported, i.line) for i in imports_of("sixchat.x", source, False, known)}
        self.assertEqual(
            found,
            {
                ("sixchat", 1),
                ("sixchat.agent", 1),
                ("sixchat.agent.service", 1),
                ("sixchat", 2),
                ("sixchat.sigalgs", 2),
                ("sixchat.errors", 2),
                ("sixchat", 3),
                ("sixchat.record", 3),
                ("twisted", 5),
                ("twisted.internet", 5),
            },
        )
