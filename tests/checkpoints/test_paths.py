"""`flmjax.checkpoints.paths.resolve`: every kind of checkpoint path a user may give, and the one error for the rest."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flmjax import model, presets
from flmjax.checkpoints import Checkpointer, NoCheckpointError, NotACheckpointError, resolve
from flmjax.checkpoints.paths import KINDS
from flmjax.convert import save_official
from flmjax.errors import UserError

CONFIG = presets.tiny()


@pytest.fixture(scope="module")
def params():
    return jax.device_get(jax.jit(functools.partial(model.init_params, CONFIG))(jax.random.key(0)))


def save_workdir(workdir, params, steps=(10, 20)):
    """A training workdir whose step s holds `params + s` and the stage config {"stage": "s<s>"}."""
    with Checkpointer(workdir) as checkpointer:
        for step in steps:
            offset_params = jax.tree.map(functools.partial(np.add, step), params)
            state = {"step": jnp.asarray(step, jnp.int32), "params": offset_params}
            checkpointer.save(step, state, CONFIG, stage_config={"stage": f"s{step}"}, force=True)
    return workdir


def first_leaf(tree):
    return np.asarray(jax.tree.leaves(tree)[0])


def test_a_released_folder_is_itself_with_no_step(params, tmp_path):
    save_official(tmp_path / "released", CONFIG, params, dtype="float32")
    checkpoint = resolve(tmp_path / "released")
    assert checkpoint.released and checkpoint.step is None and checkpoint.folder == str(tmp_path / "released")
    assert checkpoint.model_config() == CONFIG and checkpoint.stage_config() is None
    np.testing.assert_array_equal(first_leaf(checkpoint.params()), first_leaf(params))
    assert checkpoint.describe() == f"released-format checkpoint {tmp_path / 'released'}"


def test_a_released_folder_has_no_steps_to_choose(params, tmp_path):
    save_official(tmp_path / "released", CONFIG, params, dtype="float32")
    with pytest.raises(NoCheckpointError, match="released-format checkpoint: it has no steps"):
        resolve(tmp_path / "released", step=3)


def test_a_stage_workdir_is_its_newest_complete_step_or_the_one_asked_for(params, tmp_path):
    workdir = save_workdir(tmp_path / "stage", params)
    newest = resolve(workdir)
    assert (newest.folder, newest.step, newest.released) == (str(workdir), 20, False)
    assert newest.stage_config() == {"stage": "s20"} and newest.model_config() == CONFIG
    np.testing.assert_array_equal(first_leaf(newest.params()), first_leaf(params) + 20)
    assert resolve(workdir, step=10).step == 10
    assert newest.describe() == f"training checkpoint {workdir} step 20"


def test_the_main_jobs_workdir_is_its_last_stage_with_a_checkpoint(params, tmp_path):
    save_workdir(tmp_path / "main" / "stage1_a", params, steps=(5,))
    save_workdir(tmp_path / "main" / "stage2_b", params, steps=(7,))
    (tmp_path / "main" / "stage3_c" / "checkpoints").mkdir(parents=True)  # started, nothing saved yet
    checkpoint = resolve(tmp_path / "main")
    assert (checkpoint.folder, checkpoint.step) == (str(tmp_path / "main" / "stage2_b"), 7)


def test_a_step_folder_is_that_step_of_its_workdir(params, tmp_path):
    workdir = save_workdir(tmp_path / "stage", params)
    checkpoint = resolve(workdir / "checkpoints" / "10")
    assert (checkpoint.folder, checkpoint.step) == (str(workdir), 10)
    np.testing.assert_array_equal(first_leaf(checkpoint.params()), first_leaf(params) + 10)
    with pytest.raises(NoCheckpointError, match="is step 10's folder, but step 20 was asked for"):
        resolve(workdir / "checkpoints" / "10", step=20)


def test_a_missing_step_names_the_steps_there_are(params, tmp_path):
    workdir = save_workdir(tmp_path / "stage", params)
    with pytest.raises(NoCheckpointError, match=r"no complete checkpoint for step 15 .* complete steps: \[10, 20\]"):
        resolve(workdir, step=15)


def test_a_workdir_without_a_complete_step_says_so(tmp_path):
    (tmp_path / "stage" / "checkpoints").mkdir(parents=True)
    with pytest.raises(NoCheckpointError, match="no complete checkpoint under"):
        resolve(tmp_path / "stage")


@pytest.mark.parametrize("kind", ["missing", "a file", "an empty folder", "unrelated files"])
def test_a_path_that_is_no_checkpoint_is_one_line_naming_it_and_the_kinds(tmp_path, kind):
    path = tmp_path / "given"
    if kind == "a file":
        path.write_text("x")
    elif kind != "missing":
        path.mkdir()
        if kind == "unrelated files":
            (path / "notes.txt").write_text("x")
            (path / "sub").mkdir()
    with pytest.raises(NotACheckpointError) as raised:
        resolve(path, what="--workdir")
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert message.startswith(f"--workdir {path}: ") and message.endswith(KINDS)


def test_params_restore_into_the_layout_asked_for(params, tmp_path):
    workdir = save_workdir(tmp_path / "stage", params, steps=(1,))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("x",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), model.abstract_params(CONFIG)
    )
    restored = resolve(workdir).params(abstract)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(restored))
