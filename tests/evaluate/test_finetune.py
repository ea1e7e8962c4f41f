from wsjax import data, models
from wsjax.common import config as config_lib
from wsjax.evaluate import finetune
from wsjax.zoo import snapshots


def test_fine_tuning_starts_in_threads_gives_what_one_at_a_time_gives(fake_zoo):
    zoo = config_lib.load(fake_zoo, "zoo")
    module, dataset = models.build(zoo.model, zoo.tasks.k), data.load(zoo.data)
    starts = {f"m{m}": snapshots.load_variables(fake_zoo, m, "final") for m in range(3)}
    classes = snapshots.read_manifest(fake_zoo)[0]["classes"]
    val = data.task_split(dataset, classes, "val")
    run = lambda workers: finetune.curves(  # noqa: E731
        module, starts, dataset, classes, val, epochs=(0, 1), learning_rate=3e-3, batch_size=64,
        seed=0, strategy="sequential", slots=1, diverge_loss_factor=10.0, workers=workers)
    one, two = run(1), run(2)
    assert list(two) == list(starts) and one == two
    assert all(len(v) == 2 and 0 <= min(v) and max(v) <= 1 for v in one.values())
    assert any(v[1] != v[0] for v in one.values())  # an epoch of training moved them
