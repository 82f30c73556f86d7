"""``dclnet index | search | visualize | export``: using a trained checkpoint.

:func:`register` adds the sub-commands to ``dclnet``'s parser. Each command is a small
function over the library in :mod:`dclnet.inference`; input problems raise
:class:`~dclnet.errors.DclnetError` (printed by ``dclnet`` as one ``error:`` line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dclnet.data.records import MODALITIES
from dclnet.errors import DclnetError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint from dclnet train")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (0 = none)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip undecodable images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _embedder(args: argparse.Namespace):
    from dclnet.inference.api import Embedder

    return Embedder.from_checkpoint(args.checkpoint, args.device)


# -- index / search --------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> None:
    from dclnet.inference.index import write_index

    embedder = _embedder(args)
    index = write_index(
        embedder,
        args.images,
        args.modality,
        args.output,
        batch_size=args.batch_size,
        flip=args.flip,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        progress=not args.no_progress,
    )
    print(
        f"indexed {len(index)} {index.modality} images below {index.root} "
        f"({index.embeddings.shape[1]}-d, model {index.identity[:12]}) -> {args.output}"
    )


def cmd_search(args: argparse.Namespace) -> None:
    from dclnet.inference.index import (
        build_index,
        expand_inputs,
        format_results,
        load_index,
        search,
        write_results,
    )

    if (args.index is None) == (args.gallery is None):
        raise DclnetError("give exactly one of --index INDEX (saved) or --gallery DIR (on the fly)")
    queries = expand_inputs(args.query)
    embedder = _embedder(args)
    if args.index is not None:
        index = load_index(args.index)
        index.check_model(embedder, where=f"index {args.index}")
    else:
        index = build_index(
            embedder,
            args.gallery,
            args.gallery_modality,
            batch_size=args.batch_size,
            flip=args.flip,
            workers=args.workers,
            skip_corrupt=args.skip_corrupt,
            progress=not args.no_progress,
        )
    results = search(
        embedder,
        index,
        queries,
        args.query_modality,
        topk=args.topk,
        batch_size=args.batch_size,
        workers=args.workers,
        chunk_size=args.chunk_size,
    )
    print(
        f"{len(results)} {args.query_modality} queries against {len(index)} {index.modality} "
        f"images below {index.root}, top {min(args.topk, len(index))} each:"
    )
    print(format_results(results))
    write_results(results, index.root, json_path=args.json, csv_path=args.csv)
    for path in (args.json, args.csv):
        if path is not None:
            print(f"wrote {path}")


def _register_index(sub) -> None:
    p = sub.add_parser("index", help="embed a gallery folder once and save it as a search index")
    _add_model_args(p)
    p.add_argument("--modality", required=True, choices=MODALITIES, help="gallery modality")
    p.add_argument("--images", type=Path, required=True, help="folder, searched recursively")
    p.add_argument("--output", type=Path, required=True, help="index directory to write")
    p.add_argument("--flip", action="store_true", help="flip-averaged embeddings")
    _add_embed_args(p)
    p.set_defaults(func=cmd_index)


def _register_search(sub) -> None:
    p = sub.add_parser("search", help="rank a gallery (saved index or folder) for query images")
    _add_model_args(p)
    p.add_argument("--index", type=Path, help="index directory from dclnet index")
    p.add_argument("--gallery", type=Path, help="gallery folder, indexed on the fly")
    p.add_argument("--gallery-modality", default="visible", choices=MODALITIES)
    p.add_argument("--flip", action="store_true", help="flip-averaged embeddings (--gallery)")
    p.add_argument("--query", nargs="+", required=True, help="query image files and/or folders")
    p.add_argument("--query-modality", default="infrared", choices=MODALITIES)
    p.add_argument("--topk", type=int, default=10, help="results per query")
    p.add_argument("--chunk-size", type=int, default=8192, help="gallery rows scored at once")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--csv", type=Path, help="write results as CSV (query,rank,path,score)")
    _add_embed_args(p)
    p.set_defaults(func=cmd_search)


# -- export ---------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> None:
    from dclnet.inference.api import Embedder
    from dclnet.inference.export import export_embedding

    embedder = Embedder.from_checkpoint(args.checkpoint, "cpu")  # exported from a CPU copy
    report = export_embedding(embedder, args.modality, args.format, args.output)
    print(
        f"exported the {args.modality} embedding path ({args.format}, dynamic batch, "
        f"{embedder.embed_dim}-d output) in {report.seconds:.1f} s -> {report.path}"
    )
    print(f"preprocessing and input/output names -> {report.sidecar}")
    if report.max_abs_diff is None:
        print("not checked: onnxruntime is not installed (pip install 'dclnet[export]')")
    else:
        runtime = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
        print(
            f"checked with {runtime} on a batch of {report.check_batch}: "
            f"max |exported - PyTorch| = {report.max_abs_diff:.2e}"
        )


def _register_export(sub) -> None:
    p = sub.add_parser("export", help="export one modality's embedding path (ONNX/TorchScript)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint from dclnet train")
    p.add_argument("--modality", required=True, choices=MODALITIES, help="branch to export")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--output", type=Path, required=True, help="file to write (+ FILE.json)")
    p.set_defaults(func=cmd_export)


def register(sub) -> None:
    """Add ``index``, ``search``, ``visualize`` and ``export`` to ``dclnet``'s sub-parsers.

    Args:
        sub: The object returned by ``parser.add_subparsers()``.
    """
    _register_index(sub)
    _register_search(sub)
    _register_export(sub)
