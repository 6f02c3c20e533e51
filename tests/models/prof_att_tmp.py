import time, collections
import jax, jax.numpy as jnp, dataclasses
from jax import monitoring
stats = collections.defaultdict(float); counts = collections.Counter()
def listener(event, duration=None, **kw):
    stats[event] += duration or 0; counts[event] += 1
monitoring.register_event_duration_secs_listener(listener)
from tests.models import test_attention as ta
from littlehelp.models import build_model
from littlehelp.objectives import EncoderDecoderObjective
from tests.helpers import TINY_T5, t5_data

def phase(name, f, *a):
    s0 = dict(stats); c0 = dict(counts); t0 = time.time(); r = f(*a); jax.block_until_ready(r); dt = time.time() - t0
    d = lambda k: stats[k] - s0.get(k, 0)
    n = counts['/jax/core/compile/backend_compile_duration'] - c0.get('/jax/core/compile/backend_compile_duration', 0)
    print(f"\nPHASE {name}: {dt:.1f}s (backend compile {d('/jax/core/compile/backend_compile_duration'):.1f}s in {n}, trace {d('/jax/core/compile/jaxpr_trace_duration'):.1f}s, lower {d('/jax/core/compile/jaxpr_to_mlir_module_duration'):.1f})", flush=True)
    return r

def test_prof():
    batch = phase("data", ta._first_batch, t5_data(batch_size=2))
    print({k: v.shape for k, v in batch.items()})
    objectives = {b: EncoderDecoderObjective(build_model(dataclasses.replace(TINY_T5, attention_backend=b))) for b in ("xla", "jax_nn", "pallas_tpu_interpret")}
    params = phase("init", jax.jit(objectives["xla"].init_params), jax.random.key(0), batch)
    for b, o in objectives.items():
        loss = lambda p, o=o: o.loss(p, batch, jax.random.key(1), jnp.int32(0))[0]
        f = jax.jit(jax.value_and_grad(loss))
        phase(b + " compile", lambda: f.lower(params).compile())
        c = f.lower(params).compile()
        phase(b + " run", c, params)
