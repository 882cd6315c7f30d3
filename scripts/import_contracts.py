"""An import-linter contract type for the design's "no cycles between packages" rule.

import-linter's own `acyclic_siblings` compares only the children of one package, so it cannot
see a cycle that leaves a root package and comes back through another one: `relay.sessions ->
cascade -> relay.sessions` is a cycle between two packages of the design, but to `acyclic_siblings`
it is `relay.sessions -> relay.sessions` via an outsider. `acyclic_packages` takes the packages
by name instead (module expressions, so `relay.*` is each of relay's subpackages and top-level
modules), treats each one as a single node with everything inside it, and asks grimp for the
imports that would have to go to make those nodes acyclic. Cycles inside one package are not its
business.

Registered in pyproject.toml (`contract_types`); `lint-imports` puts the working directory on
sys.path, so it runs from the repository's root, as `make lint` does.
"""

from __future__ import annotations

from typing import TypedDict, cast

from grimp import ImportGraph
from importlinter.application import contract_utils, output
from importlinter.application.contract_utils import AlertLevel
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules
from importlinter.domain.imports import ImportExpression, ModuleExpression


class Link(TypedDict):
    """One direct import of a cycle, with the lines it is made on."""

    importer: str
    imported: str
    lines: list[int]


class Cycle(TypedDict):
    """A cycle between packages: the import grimp would remove to break it, then the way back."""

    packages: list[str]
    links: list[Link]


class AcyclicPackagesContract(Contract):
    """No import cycles between `packages`, each taken whole. Options: `packages` (module
    expressions, each must match), `ignore_imports` and `unmatched_ignore_imports_alerting` as in
    import-linter's own contracts."""

    type_name = "acyclic_packages"

    packages = fields.SetField(subfield=fields.ModuleExpressionField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        ignored = cast("set[ImportExpression] | None", self.ignore_imports)
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=sorted(ignored or (), key=str),
            unmatched_alerting=cast(AlertLevel, self.unmatched_ignore_imports_alerting),
        )
        expressions = sorted(cast("set[ModuleExpression]", self.packages), key=str)
        matched = module_expressions_to_modules(graph, expressions, raise_if_unmatched=True)
        packages = sorted(module.name for module in matched)
        output.verbose_print(verbose, f"Searching for cycles between {len(packages)} packages...")
        breakers = graph.nominate_cycle_breakers(*packages) if len(packages) > 1 else set()
        cycles = [_cycle(graph, packages, importer, imported) for importer, imported in sorted(breakers)]
        return ContractCheck(
            kept=not cycles,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"cycles": cycles},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            output.print_error(" -> ".join(cycle["packages"]) + ":")
            output.new_line()
            for index, link in enumerate(cycle["links"]):
                lines = ", ".join(f"l.{line}" for line in link["lines"]) or "l.?"
                text = f"{link['importer']} -> {link['imported']} ({lines})"
                if index == 0:
                    output.print_error(f"-   {text}", bold=False)
                else:
                    output.indent_cursor()
                    output.print_error(text, bold=False)
            output.new_line()


def _package_of(module: str, packages: list[str]) -> str:
    """The one of `packages` that holds `module` (the longest name wins)."""
    holders = [p for p in packages if module == p or module.startswith(p + ".")]
    return max(holders, key=len) if holders else module


def _cycle(graph: ImportGraph, packages: list[str], importer: str, imported: str) -> Cycle:
    """The cycle that the import `importer -> imported` closes: that import, then the shortest
    chain of imports back to the importer's package (from the imported module when it has one,
    else from anywhere in its package: the package counts as one node)."""
    home, away = _package_of(importer, packages), _package_of(imported, packages)
    back = (
        graph.find_shortest_chain(importer=imported, imported=home, as_packages=True)
        or graph.find_shortest_chain(importer=away, imported=home, as_packages=True)
        or ()
    )
    links = [_link(graph, importer, imported)]
    links += [_link(graph, a, b) for a, b in zip(back, back[1:], strict=False)]
    names = [home]
    for link in links:
        for module in (link["importer"], link["imported"]):
            if _package_of(module, packages) != names[-1]:
                names.append(_package_of(module, packages))
    return Cycle(packages=names, links=links)


def _link(graph: ImportGraph, importer: str, imported: str) -> Link:
    details = graph.get_import_details(importer=importer, imported=imported)
    return Link(importer=importer, imported=imported, lines=sorted({d["line_number"] for d in details}))
