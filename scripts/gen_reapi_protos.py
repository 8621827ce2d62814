"""Generate pytest_lrun/reapi/protos/: the Remote Execution API's Python modules.

Usage: ``python scripts/gen_reapi_protos.py`` (needs the ``reapi`` extra and grpcio-tools).

No maintained package on the Python package index ships the REAPI protos for
Python 3.10+, so they are generated here, from the published definitions that
BuildGrid 0.9.1 (the server the test suite runs) carries in its wheel: the
serialized ``FileDescriptorProto`` of each file, read out of its generated modules
as literals (nothing of BuildGrid is executed). The files generated:

* ``build/bazel/remote/execution/v2/remote_execution.proto`` and its
  ``build/bazel/semver/semver.proto``: CAS, action cache, execution, capabilities;
* ``google/bytestream/bytestream.proto``: large blobs and streamed stdout;
* ``google/devtools/remoteworkers/v1test2/{bots,command,worker}.proto``: the
  Remote Workers API that ``lrun worker`` leases actions with.

``google.longrunning``, ``google.rpc`` and ``google.api`` are not generated: they
come from googleapis-common-protos (a dependency of the extra), so a process that
also loads that package's modules never meets two different files of one name.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "pytest_lrun" / "reapi" / "protos"
PACKAGE = "pytest_lrun.reapi.protos"
BUILDGRID = "buildgrid==0.9.1"
WANTED = (
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "build/bazel/semver/semver.proto",
    "google/bytestream/bytestream.proto",
    "google/devtools/remoteworkers/v1test2/bots.proto",
    "google/devtools/remoteworkers/v1test2/command.proto",
    "google/devtools/remoteworkers/v1test2/worker.proto",
)
# The modules of googleapis-common-protos (and protobuf) the generated files import.
COMMON = (
    "google.api.annotations_pb2",
    "google.longrunning.operations_proto_pb2",
    "google.rpc.status_pb2",
)
OURS = ("build.", "google.bytestream", "google.devtools.remoteworkers")


def published(wheel: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Each wanted file's descriptor, read as a literal out of BuildGrid's generated modules."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not (name.startswith("buildgrid/_protos/") and name.endswith("_pb2.py")):
                continue
            for node in ast.walk(ast.parse(z.read(name))):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
                    proto = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(node.args[0]))
                    if proto.name in WANTED:
                        found[proto.name] = proto
    missing = sorted(set(WANTED) - set(found))
    if missing:
        raise SystemExit(f"gen_reapi_protos: {BUILDGRID} has no {', '.join(missing)}")
    return found


def common() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files the wanted ones import from googleapis-common-protos and protobuf, with their imports."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: object) -> None:
        name = file.name  # type: ignore[attr-defined]
        if name in found:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)  # type: ignore[attr-defined]
        found[name] = proto
        for dep in file.dependencies:  # type: ignore[attr-defined]
            add(dep)

    for module in COMMON:
        add(importlib.import_module(module).DESCRIPTOR)
    for name in ("any", "duration", "timestamp", "wrappers", "empty", "field_mask"):
        add(importlib.import_module(f"google.protobuf.{name}_pb2").DESCRIPTOR)
    return found


def generate(wheel: Path, work: Path) -> None:
    files = {**common(), **published(wheel)}
    descriptor_set = descriptor_pb2.FileDescriptorSet(file=list(files.values()))
    (work / "set.pb").write_bytes(descriptor_set.SerializeToString())
    out = work / "out"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={work / 'set.pb'}",
         f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}", *WANTED],
        check=True,
    )
    shutil.rmtree(OUT, ignore_errors=True)
    for path in sorted(out.rglob("*.py*")):
        text = path.read_text()
        for prefix in OURS:
            text = text.replace(f"from {prefix}", f"from {PACKAGE}.{prefix}")
            text = text.replace(f"import {prefix}", f"import {PACKAGE}.{prefix}")
        target = OUT / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for folder in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated by scripts/gen_reapi_protos.py: do not edit."""\n')


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.13", "-d", str(work), BUILDGRID],
            check=True,
        )
        generate(next(work.glob("buildgrid-*.whl")), work)
    print(f"gen_reapi_protos: wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
