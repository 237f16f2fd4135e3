"""ImageNet checkpoints of TF-Slim: locate or download them, restore all but the logits, explain misfits.

Restoring follows research/slim/train_image_classifier.py (_get_init_fn with
checkpoint_exclude_scopes): every model variable of the network is restored except those under the
excluded (logits / AuxLogits) scopes. Unlike TF-Slim, which lets the Saver fail on the first bad
variable, the whole checkpoint is compared with the graph first and a UserError lists everything
that does not fit (missing names, shape and dtype mismatches, a checkpoint of another network).

A checkpoint "prefix" is what TensorFlow's readers take: the single file of the V1 format used by
the official 2016/2017 TF-Slim archives (``resnet_v1_50.ckpt``), or the stem of a V2 checkpoint
(``x.ckpt`` for ``x.ckpt.index`` + ``x.ckpt.data-*``).
"""

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from deepbc.data.archives import ExtractLimits, safe_extract
from deepbc.jobs.atomic import write_json
from deepbc.jobs.errors import UserError
from deepbc.training.nets import NetSpec, get_network_fn, get_spec

LOG = logging.getLogger(__name__)
MAX_LISTED = 15  # per kind of mismatch in an error message; the counts are always complete
# The official archives unpack to at most about 0.6 GB (vgg_19) at a ratio near 1 (float weights
# barely compress): these limits refuse a decompression bomb and let every real one through.
ARCHIVE_LIMITS = ExtractLimits(max_total_bytes=2e9, max_ratio=10,
                               config="the limits for TF-Slim checkpoint archives (deepbc.training.checkpoints.ARCHIVE_LIMITS)",
                               in_config=False)


def checkpoint_path(arch: str, checkpoint_dir) -> Path:
    """Where the checkpoint prefix of ``arch`` is expected: ``checkpoint_dir/<checkpoint_file>``."""
    return Path(checkpoint_dir) / get_spec(arch).checkpoint_file


def checkpoint_exists(prefix) -> bool:
    """True if ``prefix`` names a readable checkpoint: a V1 file, or a V2 ``.index``."""
    prefix = Path(prefix)
    return prefix.is_file() or Path(f"{prefix}.index").is_file()


def find_checkpoint(arch: str, checkpoint_dir) -> Path | None:
    """The checkpoint of ``arch`` in ``checkpoint_dir`` or its ``<arch>/`` subfolder, else None."""
    spec = get_spec(arch)
    for prefix in (checkpoint_path(arch, checkpoint_dir), Path(checkpoint_dir) / arch / spec.checkpoint_file):
        if checkpoint_exists(prefix):
            return prefix
    return None


def provide_checkpoint(arch: str, checkpoint_dir, allow_download: bool = False) -> Path:
    """Return the checkpoint prefix of ``arch``, downloading the official archive if allowed.

    Missing and not downloadable: a UserError naming the file expected, the folder searched and
    the URL to get it from.
    """
    spec = get_spec(arch)
    found = find_checkpoint(arch, checkpoint_dir)
    if found is not None:
        return found
    expected = checkpoint_path(arch, checkpoint_dir)
    where = f"{expected} (also looked in {Path(checkpoint_dir) / arch}/)"
    if spec.checkpoint_url is None:
        raise UserError(f"no ImageNet checkpoint for {arch}: TF-Slim publishes none and none was found",
                        where=where,
                        fix=f"put a checkpoint of {arch} (variables under '{spec.scope}/') at {expected}, "
                            "or train it from scratch (train init: scratch)")
    if not allow_download:
        raise UserError(f"the ImageNet checkpoint of {arch} ({spec.checkpoint_file}) is missing",
                        where=where,
                        fix=f"download {spec.checkpoint_url}, extract {spec.checkpoint_file} into "
                            f"{checkpoint_dir}, or allow the download (allow_checkpoint_download: true "
                            "in the config, --allow-download for get_checkpoint.py)")
    return _download(spec, Path(checkpoint_dir))


def _download(spec: NetSpec, checkpoint_dir: Path) -> Path:
    from deepbc.data import download

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    archive = checkpoint_dir / ".downloads" / spec.checkpoint_url.rsplit("/", 1)[-1]
    # TF-Slim publishes no checksums for these archives; the checkpoint is verified against the
    # network's variables instead (see check_checkpoint).
    download.fetch(spec.checkpoint_url, archive, sha256=None, progress=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=checkpoint_dir) as tmp:
        names = safe_extract(archive, Path(tmp), ARCHIVE_LIMITS)
        files = [n for n in names if _is_checkpoint_file(Path(n).name, spec.checkpoint_file)]
        if not files:
            raise UserError(f"{archive.name} holds no {spec.checkpoint_file}",
                            where=f"{archive} (members: {', '.join(names[:10])})",
                            fix=f"check {spec.checkpoint_url}, or put {spec.checkpoint_file} into "
                                f"{checkpoint_dir} yourself")
        # The V2 .index goes last: the prefix only looks complete once everything is in place.
        for name in sorted(files, key=lambda n: n.endswith(".index")):
            os.replace(Path(tmp) / name, checkpoint_dir / Path(name).name)
    archive.unlink()
    with contextlib.suppress(OSError):  # other downloads may still be using the folder
        archive.parent.rmdir()
    prefix = checkpoint_path(spec.name, checkpoint_dir)
    LOG.info("extracted %s", prefix)
    return prefix


def _is_checkpoint_file(basename: str, checkpoint_file: str) -> bool:
    return basename == checkpoint_file or (basename.startswith(checkpoint_file + ".")
                                           and basename[len(checkpoint_file) + 1:].startswith(("index", "data-")))


def read_checkpoint(prefix) -> dict[str, tuple[list[int], str]]:
    """Map every variable of the checkpoint to (shape, dtype name); UserError if unreadable."""
    import tensorflow as tf

    prefix = Path(prefix)
    if not checkpoint_exists(prefix):
        raise UserError(f"no checkpoint at {prefix}", where=str(prefix),
                        fix="give a checkpoint prefix: the .ckpt file, or the name before .index")
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(str(prefix))
    except (tf.errors.OpError, ValueError, RuntimeError) as err:
        raise UserError(f"{prefix} is not a readable TensorFlow checkpoint: {err}", where=str(prefix),
                        fix="download it again or point to the right file") from None
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return {name: (list(shapes[name]), dtypes[name].name) for name in shapes}


def in_scopes(name: str, scopes) -> bool:
    """True if variable ``name`` lies under one of ``scopes`` (whole path components)."""
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in scopes)


def check_checkpoint(arch: str, prefix, variables, exclude_scopes=None) -> dict:
    """Compare graph ``variables`` with the checkpoint; return a report or raise a UserError.

    Every variable not under ``exclude_scopes`` (default: the network's logits scopes) must be in
    the checkpoint with the same shape and dtype. The report: ``checkpoint``, ``restored`` (count),
    ``excluded`` (names left to their initialiser), ``unused`` (checkpoint variables not restored,
    such as the ImageNet logits and global_step).
    """
    spec = get_spec(arch)
    exclude = tuple(spec.exclude_scopes if exclude_scopes is None else exclude_scopes)
    ckpt = read_checkpoint(prefix)
    wanted = {v.op.name: v for v in variables if not in_scopes(v.op.name, exclude)}
    excluded = sorted(v.op.name for v in variables if in_scopes(v.op.name, exclude))
    for scope in exclude:
        if not any(in_scopes(name, [scope]) for name in excluded):
            LOG.warning("exclude scope %r matches no variable of the network", scope)
    if not wanted:
        raise UserError(f"nothing to restore into {arch}: the graph has no variables outside {exclude}",
                        where=str(prefix), fix="build the network before asking to restore it")
    missing, wrong = [], []
    for name, var in sorted(wanted.items()):
        if name not in ckpt:
            missing.append(name)
            continue
        shape, dtype = var.shape.as_list(), var.dtype.base_dtype.name
        if (shape, dtype) != tuple(ckpt[name]):
            wrong.append(f"{name}: network {shape} {dtype}, checkpoint {ckpt[name][0]} {ckpt[name][1]}")
    if missing or wrong:
        raise UserError(_mismatch_message(spec, prefix, len(wanted), ckpt, missing, wrong),
                        where=str(prefix),
                        fix=f"use the checkpoint of {arch}"
                            + (f" from {spec.checkpoint_url}" if spec.checkpoint_url else "")
                            + ", or one saved from this same network; layers that are meant to be "
                              "new belong in the exclude scopes")
    return {"checkpoint": str(prefix), "restored": len(wanted), "excluded": excluded,
            "unused": sorted(set(ckpt) - set(wanted))}


def _mismatch_message(spec, prefix, n_wanted, ckpt, missing, wrong) -> str:
    lines = [f"checkpoint {prefix} does not fit network {spec.name}: {len(missing)} of {n_wanted} "
             f"variables missing, {len(wrong)} with another shape or dtype"]
    tops = {}  # top scope (with its slash) or top-level variable name -> count
    for name in ckpt:
        top = name.split("/", 1)[0] + ("/" if "/" in name else "")
        tops[top] = tops.get(top, 0) + 1
    if spec.scope + "/" not in tops:
        found = ", ".join(f"'{t}' ({n})" for t, n in sorted(tops.items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"unexpected prefix: its variables are under {found}, none under '{spec.scope}/' "
                     f"(a checkpoint of another network?)")
    for title, items in (("missing from the checkpoint", missing), ("shape/dtype mismatch", wrong)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


def restore_fn(arch: str, checkpoint_path, exclude_scopes=None):
    """Return ``(init_fn, report)`` restoring every model variable of the current graph but the logits.

    Call inside the graph, after building the network. ``init_fn(sess)`` restores the checkpoint
    into an initialised session (run the global initialiser first: excluded variables keep their
    initial values). ``exclude_scopes`` defaults to ``NETWORKS[arch].exclude_scopes``. The
    variables are slim's model variables (weights, biases, batch-norm parameters and moving
    statistics; not the optimizer's slots nor global_step). Mismatches raise a UserError before any
    session exists; see check_checkpoint for the report.
    """
    import tensorflow as tf

    from deepbc.training.compat import import_slim, require_graph_mode

    require_graph_mode("restore_fn")
    variables = import_slim().get_model_variables()
    report = check_checkpoint(arch, checkpoint_path, variables, exclude_scopes)
    excluded = set(report["excluded"])
    var_list = {v.op.name: v for v in variables if v.op.name not in excluded}
    saver = tf.compat.v1.train.Saver(var_list=var_list, name="imagenet_restore", sharded=False)
    prefix = str(checkpoint_path)

    def init_fn(sess):
        LOG.info("restoring %d variables of %s from %s (%d left to their initialiser)",
                 report["restored"], arch, prefix, len(excluded))
        saver.restore(sess, prefix)

    return init_fn, report


def prepare_checkpoint(arch: str, checkpoint_dir, allow_download: bool, out) -> dict:
    """Provide the checkpoint of ``arch``, check it against the network, write the JSON record ``out``.

    The record: ``arch``, ``checkpoint`` (the prefix, as found under ``checkpoint_dir``),
    ``variables`` (count in the checkpoint), ``restored`` (count restored into the network),
    ``exclude_scopes`` and ``checkpoint_classes`` (width of the checkpoint's logits). Training rules
    depend on this file, so a bad checkpoint fails here, in seconds, not at the start of training.
    """
    import tensorflow as tf

    spec = get_spec(arch)
    prefix = provide_checkpoint(arch, checkpoint_dir, allow_download)
    with tf.Graph().as_default():
        size = spec.default_image_size
        get_network_fn(arch, num_classes=2)(tf.compat.v1.placeholder(tf.float32, [1, size, size, 3]))
        _, report = restore_fn(arch, prefix)
    ckpt = read_checkpoint(prefix)
    logits = [shape[-1] for name, (shape, _) in ckpt.items()
              if in_scopes(name, spec.exclude_scopes[:1]) and len(shape) >= 2]
    record = {"arch": arch, "checkpoint": str(prefix), "variables": len(ckpt), "restored": report["restored"],
              "exclude_scopes": list(spec.exclude_scopes),
              "checkpoint_classes": logits[0] if logits else None}
    write_json(out, record)
    LOG.info("%s: %d of %d checkpoint variables restore into the network -> %s",
             prefix, report["restored"], len(ckpt), out)
    return record

