"""Training checkpoints: exact round trips (state and data position), other meshes, retention, unfinished saves,
and the errors for mismatched, corrupt and already existing checkpoints."""

import functools
import gc
import hashlib
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flmjax import model, presets, sharding
from flmjax.checkpoints.checkpointer import Checkpointer
from flmjax.checkpoints.errors import CheckpointCorruptError, CheckpointExistsError, CheckpointMismatchError
from flmjax.checkpoints.layout import latest_complete_step
from flmjax.data.examples import EXAMPLE_KEYS, SourceRule, StreamIds
from flmjax.data.pipeline import WeightedSource, batch_iterator, stage_dataset
from flmjax.data.records import make_record

pytestmark = pytest.mark.xdist_group("checkpointer")  # the initialised params are a module fixture, built once

CONFIG = presets.tiny()
CPU = jax.sharding.SingleDeviceSharding(jax.devices()[0])


class CharEncoder:
    """Module-level, so picklable: one id per character."""

    def encode(self, text):
        return [10 + ord(c) % 200 for c in text]


def data_iterator(seed=0):
    records = [
        make_record(
            f"tts-{i}",
            speak_codes=np.full((12, 8), i, np.int64),
            speak_segments=[{"start": 1, "end": 6, "text": f"say {i}"}],
        )
        for i in range(16)
    ]
    source = WeightedSource("tts", records, SourceRule("tts"))
    return batch_iterator(
        stage_dataset([source], CharEncoder(), StreamIds(3, 2048), length=16, batch_size=2, seed=seed)
    )


@pytest.fixture(scope="module")
def params():
    return jax.jit(functools.partial(model.init_params, CONFIG))(jax.random.key(0))


def make_state(params, step, with_opt_state=True):
    state = {"step": jnp.asarray(step, jnp.int32), "params": params}
    if with_opt_state:
        state["opt_state"] = optax.adamw(1e-3).init(params)
    return state


def abstract_of(tree, shardings=None):
    if shardings is None:
        shardings = jax.tree.map(lambda _: CPU, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def params_only_abstract(config=CONFIG):
    return {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=CPU),
        "params": abstract_of(model.abstract_params(config)),
    }


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def tree_hash(path):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            file = os.path.join(root, name)
            digest.update(os.path.relpath(file, path).encode())
            with open(file, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def save_steps(workdir, params, steps, **options):
    with Checkpointer(workdir, **options) as checkpointer:
        for step in steps:
            checkpointer.save(step, make_state(params, step, with_opt_state=False), CONFIG)


def test_restore_gives_the_saved_state_and_the_iterator_continues_where_it_was(params, tmp_path):
    state = make_state(params, 7)
    adam, *rest = state["opt_state"]  # moments and count away from their initial zeros
    adam = adam._replace(count=jnp.asarray(7, jnp.int32), mu=params, nu=jax.tree.map(jnp.square, params))
    state["opt_state"] = (adam, *rest)
    iterator = data_iterator()
    for _ in range(3):
        next(iterator)
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.save(7, state, CONFIG, data_iterator=iterator)
    expected_batches = [next(iterator) for _ in range(2)]  # iterating on while the save runs is allowed
    checkpointer.close()

    fresh_iterator = data_iterator()
    restored = Checkpointer(tmp_path).restore(abstract_state=abstract_of(state), data_iterator=fresh_iterator)
    assert_trees_equal(restored, state)
    for expected in expected_batches:
        batch = next(fresh_iterator)
        for key in EXAMPLE_KEYS:
            np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def test_checkpoint_of_a_2x2x2_mesh_restores_onto_1x8_and_onto_4_devices(tmp_path):
    saved_mesh = sharding.make_mesh((2, 2, 2))
    sharded = sharding.init_params_sharded(CONFIG, jax.random.key(1), saved_mesh)
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(3, {"step": jnp.asarray(3, jnp.int32), "params": sharded}, CONFIG)
    expected = jax.device_get(sharded)
    for mesh in (sharding.make_mesh((1, 8, 1)), sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])):
        shardings = sharding.param_shardings(CONFIG, mesh)
        abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_of(sharded, shardings)}
        restored = Checkpointer(tmp_path).restore(abstract_state=abstract)
        assert int(restored["step"]) == 3
        assert_trees_equal(jax.device_get(restored["params"]), expected)
        for leaf, want in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(shardings)):
            assert leaf.sharding == want


def test_max_to_keep_keeps_the_newest_steps(params, tmp_path):
    save_steps(tmp_path, params, [1, 2, 3, 4], max_to_keep=2)
    assert Checkpointer(tmp_path).all_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_an_unfinished_save_is_never_the_latest_step(params, tmp_path):
    save_steps(tmp_path, params, [5])
    # What an interrupted save leaves: orbax writes into `<step>.orbax-checkpoint-tmp` and renames at the end.
    shutil.copytree(tmp_path / "checkpoints" / "5", tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp")
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest_step() == 5
    assert latest_complete_step(tmp_path) == 5
    assert int(checkpointer.restore(abstract_state=params_only_abstract())["step"]) == 5


def test_a_step_folder_without_its_meta_item_is_not_complete(params, tmp_path):
    save_steps(tmp_path, params, [5])
    shutil.copytree(tmp_path / "checkpoints" / "5" / "params", tmp_path / "checkpoints" / "9" / "params")
    assert Checkpointer(tmp_path).all_steps() == [5]
    assert latest_complete_step(tmp_path) == 5


def test_an_existing_step_from_another_run_is_never_overwritten(params, tmp_path):
    save_steps(tmp_path, params, [4])
    before = tree_hash(tmp_path)
    other = make_state(jax.tree.map(jnp.zeros_like, params), 4, with_opt_state=False)
    with Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(CheckpointExistsError, match="step 4 already exists"):
            checkpointer.save(4, other, CONFIG, force=True)
    assert tree_hash(tmp_path) == before


def test_saving_a_step_again_in_the_same_run_is_a_no_op(params, tmp_path):
    with Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.save(4, make_state(params, 4, with_opt_state=False), CONFIG)
        assert not checkpointer.save(4, make_state(params, 4, with_opt_state=False), CONFIG, force=True)
    assert Checkpointer(tmp_path).all_steps() == [4]


def test_read_meta_gives_the_model_config_stage_config_and_step(params, tmp_path):
    config = CONFIG.replace(remat_policy="full")
    stage = ml_collections.ConfigDict({"name": "asr", "train": {"lr": 1e-4, "steps": 10}})
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(2, make_state(params, 2, with_opt_state=False), config, stage_config=stage)
    assert Checkpointer(tmp_path).read_meta() == (config, stage.to_dict(), 2)


def test_a_checkpoint_of_another_model_config_is_refused_listing_each_param_and_touching_nothing(params, tmp_path):
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, make_state(params, 1), CONFIG)
    before = tree_hash(tmp_path)
    other = presets.tiny(intermediate_size=96)
    other_params = model.abstract_params(other)
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_of(other_params),
        "opt_state": abstract_of(jax.eval_shape(optax.adamw(1e-3).init, other_params)),
    }
    with pytest.raises(CheckpointMismatchError) as error:
        Checkpointer(tmp_path).restore(abstract_state=abstract)
    message = str(error.value)
    for name in ("gate_kernel", "up_kernel"):
        assert f"params/temporal/layers/mlp/{name}: saved [2, 64, 128], expected [2, 64, 96]" in message
    assert "params/temporal/layers/mlp/down_kernel: saved [2, 128, 64], expected [2, 96, 64]" in message
    assert "opt_state/0/mu/temporal/layers/mlp/gate_kernel" in message
    assert tree_hash(tmp_path) == before


def test_restoring_an_optimizer_state_from_a_params_only_checkpoint_is_a_mismatch(params, tmp_path):
    save_steps(tmp_path, params, [0])
    abstract = {**params_only_abstract(), "opt_state": abstract_of(optax.adamw(1e-3).init(params))}
    with pytest.raises(CheckpointMismatchError, match="'opt_state' is not in the checkpoint.*restore_params"):
        Checkpointer(tmp_path).restore(abstract_state=abstract)


def test_resuming_the_data_from_a_checkpoint_without_iterator_state_is_a_mismatch(params, tmp_path):
    save_steps(tmp_path, params, [0])
    iterator = data_iterator()
    start = iterator.get_state()
    with pytest.raises(CheckpointMismatchError, match="step 0 .*holds no data iterator state"):
        Checkpointer(tmp_path).restore(abstract_state=params_only_abstract(), data_iterator=iterator)
    assert iterator.get_state() == start


def largest_params_file(workdir, step):
    folder = workdir / "checkpoints" / str(step) / "params"
    return max((path for path in folder.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)


# orbax abandons the reads still in flight when one fails; their coroutines complain when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_params_file_is_reported_as_corrupt_naming_step_and_item(params, tmp_path, damage):
    save_steps(tmp_path, params, [6])
    victim = largest_params_file(tmp_path, 6)
    if damage == "truncate":
        os.truncate(victim, victim.stat().st_size // 2)
    else:
        victim.unlink()
    with pytest.raises(CheckpointCorruptError, match=r"checkpoint step 6 .*item 'params'"):
        Checkpointer(tmp_path).restore_params(abstract_params=abstract_of(model.abstract_params(CONFIG)))
    gc.collect()  # while the warning filter above holds


def test_set_aside_moves_a_step_out_of_sight_whole_and_never_onto_an_earlier_one(params, tmp_path):
    save_steps(tmp_path, params, [2, 4])
    before = tree_hash(tmp_path / "checkpoints" / "4")
    with Checkpointer(tmp_path) as checkpointer:
        moved_to = checkpointer.set_aside(4)
        assert moved_to == str(tmp_path / "checkpoints_damaged" / "4")
        assert checkpointer.all_steps() == [2]
    assert latest_complete_step(tmp_path) == 2
    assert tree_hash(moved_to) == before
    save_steps(tmp_path, params, [4])
    with Checkpointer(tmp_path) as checkpointer:
        assert checkpointer.set_aside(4) == str(tmp_path / "checkpoints_damaged" / "4-2")
    assert tree_hash(moved_to) == before
