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
    if args.append:
        _cmd_append(args)
        return
    from dclnet.inference.indexing import write_index

    for flag, value in (("--modality", args.modality), ("--images", args.images)):
        if value is None:
            raise DclnetError(f"dclnet index needs {flag} (unless --append adds to an index)")
    embedder = _embedder(args)
    index = write_index(
        embedder,
        args.images,
        args.modality,
        args.output,
        backend=args.backend or "exact",
        factory=args.faiss,
        train_size=args.train_size,
        batch_size=args.batch_size,
        flip=args.flip,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        progress=not args.no_progress,
    )
    backend = "exact"
    if index.backend == "faiss":
        faiss = index.info["faiss"]
        backend = f"faiss {faiss['factory']}, trained on {faiss['trained_on']}"
    print(
        f"indexed {len(index)} {index.modality} images below {index.root} "
        f"({index.embed_dim}-d, model {index.identity[:12]}, {backend}) -> {args.output}"
    )


def _cmd_append(args: argparse.Namespace) -> None:
    from dclnet.inference.indexing import append_index

    for flag, value in (("--backend", args.backend), ("--faiss", args.faiss)):
        if value is not None:
            raise DclnetError(f"--append keeps the index's backend; drop {flag}")
    if args.flip or args.train_size is not None:
        raise DclnetError("--append keeps the index's settings; drop --flip / --train-size")
    index, added = append_index(
        _embedder(args),
        args.output,
        args.images,
        modality=args.modality,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        progress=not args.no_progress,
    )
    print(
        f"appended {added} new {index.modality} images below {args.images or index.root} "
        f"({index.backend}) -> {args.output} now holds {len(index)}"
    )


def cmd_search(args: argparse.Namespace) -> None:
    from dclnet.inference.index import expand_inputs
    from dclnet.inference.index_store import load_index
    from dclnet.inference.indexing import build_index
    from dclnet.inference.results import format_results, search, write_results

    if (args.index is None) == (args.gallery is None):
        raise DclnetError("give exactly one of --index INDEX (saved) or --gallery DIR (on the fly)")
    queries = expand_inputs(args.query)
    embedder = _embedder(args)
    if args.index is not None:
        index = load_index(args.index)
        index.check_model(embedder, where=f"index {args.index}")
    else:
        if args.nprobe is not None or args.ef_search is not None:
            raise DclnetError("--nprobe / --ef-search apply to a FAISS --index, not --gallery")
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
        nprobe=args.nprobe,
        ef_search=args.ef_search,
    )
    print(
        f"{len(results)} {args.query_modality} queries against {len(index)} {index.modality} "
        f"images below {index.root} ({index.backend}), top {min(args.topk, len(index))} each:"
    )
    print(format_results(results))
    write_results(results, index.root, json_path=args.json, csv_path=args.csv)
    for path in (args.json, args.csv):
        if path is not None:
            print(f"wrote {path}")


def _register_index(sub) -> None:
    p = sub.add_parser("index", help="embed a gallery folder once and save it as a search index")
    _add_model_args(p)
    p.add_argument(
        "--modality",
        choices=MODALITIES,
        help="gallery modality (required; with --append the default is the index's)",
    )
    p.add_argument(
        "--images",
        type=Path,
        help="folder, searched recursively (required; with --append the default is the "
        "index's root)",
    )
    p.add_argument("--output", type=Path, required=True, help="index directory to write")
    p.add_argument("--flip", action="store_true", help="flip-averaged embeddings")
    p.add_argument(
        "--backend",
        choices=("exact", "faiss"),
        help="exact (every row scored) or faiss (approximate, docs/search.md) (default: exact)",
    )
    p.add_argument(
        "--faiss",
        metavar="STRING",
        help='FAISS index string for --backend faiss (docs/search.md): "IVF1024,SQ8" (default; '
        '"Flat" below 40,960 images), "IVF1024,PQ512x4fs", "HNSW32", "Flat"',
    )
    p.add_argument(
        "--train-size",
        type=int,
        help="FAISS: gallery vectors sampled for training (default: 65,536 or 40 per IVF list, "
        "whichever is more, at most the gallery; none for indexes that need no training)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add the images below --images (default: the index's root) that --output lacks",
    )
    _add_embed_args(p)
    p.set_defaults(func=cmd_index)


def _register_search(sub) -> None:
    p = sub.add_parser("search", help="rank a gallery (saved index or folder) for query images")
    _add_model_args(p)
    p.add_argument(
        "--index", type=Path, help="index directory from dclnet index (default: none; or --gallery)"
    )
    p.add_argument(
        "--gallery",
        type=Path,
        help="gallery folder, indexed on the fly (default: none; or --index)",
    )
    p.add_argument(
        "--gallery-modality", default="visible", choices=MODALITIES, help="modality of --gallery"
    )
    p.add_argument("--flip", action="store_true", help="flip-averaged embeddings (--gallery)")
    p.add_argument("--query", nargs="+", required=True, help="query image files and/or folders")
    p.add_argument(
        "--query-modality", default="infrared", choices=MODALITIES, help="modality of --query"
    )
    p.add_argument("--topk", type=int, default=10, help="results per query")
    p.add_argument("--chunk-size", type=int, default=8192, help="gallery rows scored at once")
    p.add_argument(
        "--nprobe",
        type=int,
        help="FAISS IVF index: lists visited per query (default: the index's, set to 1/8 of "
        "its lists when built)",
    )
    p.add_argument(
        "--ef-search",
        type=int,
        help="FAISS HNSW index: candidate list size (default: the index's, 128 when built)",
    )
    p.add_argument("--json", type=Path, help="write results as JSON here (default: do not)")
    p.add_argument(
        "--csv", type=Path, help="write results as CSV (query,rank,path,score) (default: do not)"
    )
    _add_embed_args(p)
    p.set_defaults(func=cmd_search)


# -- visualize ------------------------------------------------------------------------------


def _wrote(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        print(f"wrote {path} ({im.width} x {im.height} pixels)")


def cmd_visualize_ranks(args: argparse.Namespace) -> None:
    from dclnet.inference.visualize import label_reader, plot_ranks, read_results

    _wrote(
        plot_ranks(
            read_results(args.results),
            args.output,
            labels=label_reader(args.labels),
            gallery_root=args.gallery_root,
            max_queries=args.max_queries,
            topk=args.topk,
        )
    )


def cmd_visualize_masks(args: argparse.Namespace) -> None:
    from dclnet.inference.index import expand_inputs
    from dclnet.inference.visualize_maps import plot_masks

    paths = expand_inputs(args.images)[: args.max_images]
    _wrote(plot_masks(_embedder(args), paths, args.modality, args.output))


def cmd_visualize_correspondence(args: argparse.Namespace) -> None:
    from dclnet.inference.visualize_maps import plot_correspondence

    out = plot_correspondence(
        _embedder(args),
        args.visible,
        args.infrared,
        args.output,
        top=args.top,
        mutual=not args.all_best,
        foreground=args.foreground,
        edge=args.edge,
    )
    _wrote(out)


def cmd_visualize_embedding(args: argparse.Namespace) -> None:
    from dclnet.inference.index import expand_inputs
    from dclnet.inference.visualize import label_reader
    from dclnet.inference.visualize_embedding import plot_image_embeddings

    out = plot_image_embeddings(
        _embedder(args),
        expand_inputs(args.visible or []),
        expand_inputs(args.infrared or []),
        args.output,
        labels=label_reader(args.labels),
        method=args.method,
        perplexity=args.perplexity,
        max_images=args.max_images,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    _wrote(out)


def cmd_visualize_curves(args: argparse.Namespace) -> None:
    from dclnet.inference.visualize_curves import plot_curves, read_metrics

    _wrote(plot_curves(read_metrics(args.run), args.output, title=f"training curves: {args.run}"))


LABELS_HELP = (
    "identities: 'folder' (parent folder = person, as in SYSU-MM01 "
    "camC/PPPP/x.jpg or RegDB Visible/P/x.bmp), 'none', or a CSV file with path,label"
)


def _register_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="draw rank lists, masks, pixel matches, maps, curves")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    k = kinds.add_parser("ranks", help="rank-list grid from `dclnet search --json`")
    k.add_argument("--results", type=Path, required=True, help="JSON from dclnet search")
    k.add_argument("--labels", default="none", help=LABELS_HELP)
    k.add_argument("--gallery-root", type=Path, help="override the gallery folder in the JSON")
    k.add_argument("--max-queries", type=int, default=8)
    k.add_argument("--topk", type=int, default=10)
    k.set_defaults(func=cmd_visualize_ranks)

    k = kinds.add_parser("masks", help="PAP part masks and part-branch CAMs over images")
    _add_model_args(k)
    k.add_argument("--modality", required=True, choices=MODALITIES)
    k.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    k.add_argument("--max-images", type=int, default=8)
    k.set_defaults(func=cmd_visualize_masks)

    k = kinds.add_parser("correspondence", help="best pixel matches on the low-level map Z")
    _add_model_args(k)
    k.add_argument("--visible", type=Path, required=True, help="visible image")
    k.add_argument("--infrared", type=Path, required=True, help="infrared image")
    k.add_argument("--top", type=int, default=20, help="matches drawn")
    k.add_argument("--all-best", action="store_true", help="best matches, not only mutual ones")
    k.add_argument(
        "--foreground",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="match only pixels the PAP head marks as the person, on each image where it marks "
        "any (default: on; --no-foreground: every pixel)",
    )
    k.add_argument(
        "--edge",
        type=int,
        default=1,
        help="leave out Z cells this close to the map border, where zero padding attracts "
        "matches (default: 1; 0 keeps them)",
    )
    k.set_defaults(func=cmd_visualize_correspondence)

    k = kinds.add_parser("embedding", help="2-D map of embeddings (PCA or t-SNE)")
    _add_model_args(k)
    both = "(default: none; give --visible and/or --infrared)"
    k.add_argument("--visible", nargs="+", help=f"visible image files and/or folders {both}")
    k.add_argument("--infrared", nargs="+", help=f"infrared image files and/or folders {both}")
    k.add_argument(
        "--labels",
        default="folder",
        help=LABELS_HELP + "; colour shows the modality, up to 8 identities are marked",
    )
    k.add_argument("--method", default="pca", choices=("pca", "tsne"), help="2-D projection")
    k.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    k.add_argument("--max-images", type=int, default=500, help="per modality")
    k.add_argument("--seed", type=int, default=0, help="t-SNE initialisation noise")
    k.set_defaults(func=cmd_visualize_embedding)

    k = kinds.add_parser("curves", help="training curves from a run's metrics.jsonl")
    k.add_argument("--run", type=Path, required=True, help="run folder or metrics.jsonl")
    k.set_defaults(func=cmd_visualize_curves)

    for k in kinds.choices.values():
        k.add_argument("--output", type=Path, required=True, help="PNG file to write")


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
    _register_visualize(sub)
    _register_export(sub)
