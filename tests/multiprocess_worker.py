"""One process of a local multi-process run, started by tests/test_multiprocess.py.

    python tests/multiprocess_worker.py --process_id=I --num_processes=N --port=P --report=R.json \
        -- <littlehelp train arguments>

Set XLA_FLAGS (fake CPU device count) and JAX_PLATFORMS=cpu in the environment. The process joins
the others through `jax.distributed.initialize` on 127.0.0.1:P (gloo collectives), as
`littlehelp train --multihost` does on a cluster, checks the rows of the first global batches it
builds (`check_batches`), then runs `littlehelp train` (`littlehelp.main.main`) with the arguments
after `--`. R.json gets the rows it kept and the run's summary.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np


def gin_value(binding: str):
    """The object gin would pass for `binding` (an `@x()` reference is called, macros followed)."""
    from gin.config import ConfigurableReference

    from littlehelp import config

    value = config.bound_value(binding)
    if isinstance(value, ConfigurableReference):
        return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
    return value


def _alternating_mesh(shape):
    """A (data, fsdp, tensor) mesh whose consecutive devices belong to different processes."""
    from jax.sharding import Mesh

    from littlehelp import partitioning

    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())]
    order = [devices[i] for i in range(len(by_process[0])) for devices in by_process]
    return Mesh(np.asarray(order).reshape(shape), partitioning.MESH_AXES)


def configure(train_args: list[str]) -> None:
    """Parses the gin files and overrides of `littlehelp train <train_args>` (and nothing else)."""
    from littlehelp import main as cli

    rest, overrides = cli.split_overrides(train_args)
    parsed = cli.build_parser().parse_args(["train", *rest])
    cli.configure("train", parsed.gin_file, overrides, [])


def check_batches(data, mesh, batches: int = 2) -> list[int]:
    """The rows of each global batch this process feeds on `mesh`, after asserting that every
    addressable shard of the first `batches` global batches holds the same rows of the stream read
    whole (`host_dataset` without rows: the single-process global batch)."""
    from littlehelp import partitioning
    from littlehelp.data import GlobalBatches, pipeline

    reference = pipeline.host_dataset(data).as_numpy_iterator()
    stream = GlobalBatches(data, mesh)
    for index in range(batches):
        expected, batch = next(reference), next(stream)
        for feature, array in batch.items():
            for shard in array.addressable_shards:
                if not np.array_equal(np.asarray(shard.data), expected[feature][shard.index]):
                    raise AssertionError(
                        f"batch {index}, {feature}: device {shard.device} does not hold rows "
                        f"{shard.index} of the global batch"
                    )
    return pipeline.process_rows(partitioning.batch_sharding(mesh), data.batch_size).tolist()


def restore_params(model_dir: str, mesh_config) -> tuple[dict, int]:
    """(parameters as host arrays keyed by tree path, step) of MODEL_DIR's newest checkpoint, restored
    with `trainer.restore_run_params` onto the mesh of `mesh_config` under the parsed gin model; also
    asserts that some arrays came back split over the mesh's devices."""
    from littlehelp import checkpoints, partitioning, trainer

    objective, data = gin_value("trainer.train.objective"), gin_value("trainer.train.train_data")
    mesh, rules = partitioning.make_mesh(mesh_config), partitioning.logical_axis_rules()
    example = {k: np.zeros((1,) + v.shape[1:], v.dtype) for k, v in trainer.batch_spec(data).items()}
    params, step = trainer.restore_run_params(
        model_dir, lambda rng: objective.init_params(rng, example), mesh, rules, checkpoints.CheckpointConfig()
    )
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    split = [path for path, leaf in leaves if len({str(s.index) for s in leaf.addressable_shards}) > 1]
    assert split, "no restored parameter is split over the mesh's devices"
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}, step


def main(argv: list[str]) -> None:
    separator = argv.index("--")
    parser = argparse.ArgumentParser()
    for name in ("process_id", "num_processes", "port"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--report", required=True)
    args, train_args = parser.parse_args(argv[:separator]), argv[separator + 1 :]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
    )
    from littlehelp import main as cli
    from littlehelp import partitioning

    cli.set_up_logging()
    configure(train_args)
    data, mesh_config = gin_value("trainer.train.train_data"), gin_value("trainer.train.mesh_config")
    run_mesh = partitioning.make_mesh(mesh_config)
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "rows": {
            "run": pipeline_rows(run_mesh, data.batch_size),
            "alternating": check_batches(data, _alternating_mesh(run_mesh.devices.shape)),
        },
    }
    summary = cli.main(["train", *train_args])
    report["summary"] = {"first_step": summary.first_step, "last_step": summary.last_step}
    Path(args.report).write_text(json.dumps(report), encoding="utf-8")
    jax.distributed.shutdown()  # every process reaches this barrier, then leaves without slow interpreter teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pipeline_rows(mesh, batch_size: int) -> list[int]:
    """The rows of each global batch this process feeds on `mesh` (`pipeline.process_rows`)."""
    from littlehelp import partitioning
    from littlehelp.data import pipeline

    return pipeline.process_rows(partitioning.batch_sharding(mesh), batch_size).tolist()


if __name__ == "__main__":
    main(sys.argv[1:])
