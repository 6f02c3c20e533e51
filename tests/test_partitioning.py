"""Mesh construction, rule validation and parameter placement on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from littlehelp import partitioning


class TwoLayer(nn.Module):
    """Two annotated matmuls: [embed, mlp] then [mlp, embed], plus an odd-sized vocab table."""

    @nn.compact
    def __call__(self, x):
        w1 = self.param("w1", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")), (16, 32))
        w2 = self.param("w2", nn.with_logical_partitioning(nn.initializers.normal(), ("mlp", "embed")), (32, 16))
        self.param("odd", nn.with_logical_partitioning(nn.initializers.normal(), ("vocab", "embed")), (7, 3))
        h = nn.with_logical_constraint(x @ w1, ("batch", "length", "mlp"))
        return h @ w2


@pytest.mark.parametrize(
    "config, shape",
    [
        (partitioning.MeshConfig(data=2, fsdp=2, tensor=2), (2, 2, 2)),
        (partitioning.MeshConfig(data=1, fsdp=-1, tensor=1), (1, 8, 1)),
        (partitioning.MeshConfig(data=-1, fsdp=1, tensor=2), (4, 1, 2)),
    ],
)
def test_mesh_shapes(config, shape):
    mesh = partitioning.make_mesh(config)
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_names == partitioning.MESH_AXES


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        partitioning.MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="needs 16 devices, but 8"):
        partitioning.make_mesh(partitioning.MeshConfig(data=4, fsdp=2, tensor=2))
    assert partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=1)).devices.size == 4
    with pytest.raises(ValueError, match="not divisible"):
        partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=3))
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        partitioning.logical_axis_rules([("mlp", "model")])
    with pytest.raises(ValueError, match="unknown logical axis 'hidden'"):
        partitioning.logical_axis_rules([("hidden", "tensor")])


def _placed_params(mesh):
    x = jnp.ones((8, 4, 16))
    boxed = jax.eval_shape(TwoLayer().init, jax.random.key(0), x)
    specs = nn.get_partition_spec(boxed)
    abstract = nn.unbox(boxed)
    rules = partitioning.logical_axis_rules()
    return abstract, specs, partitioning.param_shardings(abstract, specs, mesh, rules), rules


def test_parameters_follow_the_rules_on_2x2x2():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    _, _, shardings, _ = _placed_params(mesh)
    params = shardings["params"]
    assert params["w1"].spec == P("fsdp", "tensor")
    assert params["w2"].spec == P("tensor", "fsdp")
    # 7 is not divisible by tensor=2 nor 3 by fsdp=2: both rules are dropped.
    assert params["odd"].spec == P(None, None)


def test_replication_report_lists_only_shardable_but_replicated():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    abstract, specs, _, rules = _placed_params(mesh)
    found = partitioning.unsharded_but_shardable(abstract, specs, mesh, rules)
    assert [f.path for f in found] == ["['params']['odd']"]
    assert found[0].bytes == 7 * 3 * 4
    one_device = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    assert partitioning.unsharded_but_shardable(abstract, specs, one_device, rules) == []


def test_activation_constraint_shards_batch_and_forward_matches_unsharded():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    rules = partitioning.logical_axis_rules()
    x = jax.random.normal(jax.random.key(1), (8, 4, 16))
    params = nn.unbox(TwoLayer().init(jax.random.key(0), x))
    expected = TwoLayer().apply(params, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(TwoLayer().apply)(params, x)
    assert jnp.allclose(out, expected, atol=1e-5)
