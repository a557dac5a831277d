"""``qwenft render MANIFEST``: the objects the operator would create for a run, no cluster.

Reads the manifest with the operator's own model (:func:`qwenft_operator.spec.load_manifest`)
and prints the children :mod:`qwenft_operator.render` gets from the reconcile decision, in
creation order, as a YAML stream (a comment over each object names the phase that creates
it) or as one JSON ``List``. The operator's ``QWENFT_*`` settings (trainer image, GPU
resource name, ...) are read from the environment, as the operator reads them. The
ownerReferences carry the manifest's ``metadata.uid``: empty until the API server gave the
run one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qwenft_operator.parsed_run import Run
from qwenft_operator.phases import Phase
from qwenft_operator.render import RenderedChild, RenderError, render_children
from qwenft_operator.settings import OperatorConfig, SettingsError
from qwenft_operator.spec import ManifestError, load_manifest

EXIT_INVALID = 2

EXAMPLES = """\
examples:
  qwenft render examples/lora-single-gpu.yaml
  qwenft render examples/qlora-multinode-zero2.yaml --namespace ml --phase Training
  qwenft render run.yaml --output json | jq '.items[].kind'
  QWENFT_TRAINER_IMAGE=registry.local/trainer:dev qwenft render run.yaml
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config, launcher scripts) as readable ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def load_run(path: Path, *, namespace: str | None, settings: OperatorConfig) -> Run:
    """The run a manifest file describes, as the operator would see it once applied."""
    manifest = load_manifest(path)
    meta = manifest.metadata
    return Run(
        name=meta.name,
        namespace=namespace or meta.namespace or "default",
        uid=meta.uid or "",
        spec=manifest.spec,
        settings=settings,
        generation=meta.generation or 1,
    )


def format_yaml(children: Sequence[RenderedChild]) -> str:
    """A ``---`` separated YAML stream, each object under a comment naming its phase."""
    documents = []
    for child in children:
        body = yaml.dump(child.body, Dumper=_BlockDumper, sort_keys=False, width=100)
        documents.append(f"# created when the run enters {child.phase.value}\n{body}")
    return "---\n" + "---\n".join(documents)


def format_json(children: Sequence[RenderedChild]) -> str:
    """One ``v1`` ``List`` holding the objects, as ``kubectl get -o json`` prints many."""
    items: list[dict[str, Any]] = [child.body for child in children]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft render",
        description="Print every object the operator would create for a QwenFineTune "
        "manifest, in creation order, without a cluster.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", type=Path, help="QwenFineTune YAML file")
    parser.add_argument(
        "-n", "--namespace", help="namespace of the run (default: the manifest's, else default)"
    )
    parser.add_argument(
        "-o", "--output", choices=("yaml", "json"), default="yaml", help="output format"
    )
    parser.add_argument(
        "--phase",
        choices=[p.value for p in Phase],
        help="only the objects created when the run enters this phase",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = OperatorConfig.from_env()
        run = load_run(args.manifest, namespace=args.namespace, settings=settings)
        children = render_children(run)
    except (ManifestError, RenderError, SettingsError) as err:
        print(f"qwenft render: {err}", file=sys.stderr)
        return EXIT_INVALID
    if args.phase is not None:
        children = [c for c in children if c.phase.value == args.phase]
    sys.stdout.write(format_json(children) if args.output == "json" else format_yaml(children))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
