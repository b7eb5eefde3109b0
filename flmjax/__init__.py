"""flmjax: FLM-Audio in JAX/Flax."""

from flmjax import hardware as _hardware

_hardware.quiet_libtpu()  # before jax looks for backends: libtpu, if installed, stays quiet without TPU chips
