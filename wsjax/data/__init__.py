"""Image datasets (embedded MNIST, sklearn digits, TFDS) and the k-class task sampler."""
from wsjax.data.datasets import Dataset, load
from wsjax.data.tasks import TaskSet, composable_folds, slot_pairs, task_indices, task_set, task_split
