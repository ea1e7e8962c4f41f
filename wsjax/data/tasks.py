"""k-class tasks: which class sets exist, which are held out, and which images each sees.

A task is a sorted tuple of global class ids; its local labels are 0..k-1 in that order.
Held-out class sets are never given to a zoo model: they are for zero-shot evaluation.
"""
import dataclasses
import itertools
import math

import numpy as np

from wsjax.common.config import ConfigError, require


# Class sets listed one by one up to this many; beyond (ImageNet's 1,000 classes, k=3: 1.7e8),
# drawn at random without listing them.
MAX_LISTED = 200_000


@dataclasses.dataclass(frozen=True)
class TaskSet:
    k: int
    allowed: tuple    # class sets zoo models may train on; None: too many to list (MAX_LISTED)
    held_out: tuple   # class sets reserved for zero-shot evaluation
    num_classes: int = 0

    def sample(self, num_models, seed, models_per_set=1, cover_slots=False):
        """Class sets for `num_models` models, `models_per_set` consecutive models per set: a
        shuffled cycle over the allowed sets, so every set is used before any repeats (balanced
        where the thesis drew with replacement). With `cover_slots`, the first cycle starts with
        sets that put every class in every slot an allowed set gives it (`cover_slots_first`)."""
        rng = np.random.default_rng(seed)
        if self.allowed is None:  # distinct random sets: a cycle's first draws, too many to cover
            return [s for s in random_sets(rng, self.num_classes, self.k, -(-num_models // models_per_set),
                                           self.held_out) for _ in range(models_per_set)][:num_models]
        sets = []
        while len(sets) * models_per_set < num_models:
            cycle = [self.allowed[i] for i in rng.permutation(len(self.allowed))]
            sets.extend(cover_slots_first(cycle) if cover_slots and not sets else cycle)
        return [s for s in sets for _ in range(models_per_set)][:num_models]


def random_sets(rng, num_classes, k, n, exclude=()):
    """`n` distinct random k-class sets (sorted tuples) outside `exclude`, from a huge space."""
    out, seen = [], set(exclude)
    while len(out) < n:
        s = tuple(sorted(int(c) for c in rng.choice(num_classes, k, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def slot_pairs(classes):
    """{(slot, class)}: a network's output unit `slot` is the class at that sorted position."""
    return set(enumerate(sorted(classes)))


def pair_counts(sets):
    """{(slot, class): how many of `sets` hold it}."""
    count = {}
    for s in sets:
        for p in slot_pairs(s):
            count[p] = count.get(p, 0) + 1
    return count


def cover_slots_first(sets):
    """`sets` reordered so the first ones cover every (slot, class) pair of all of them, greedily
    (most new pairs first, ties in the given order), the rest after in the given order. A
    conditional generator composes class slots: a held-out set with a class in a slot no train
    set gave it is outside what it learnt (demo seed 0 before this: held-out R² 0.80 over its 8
    held-out sets, 0.94 over the 5 without such a slot)."""
    rest, head, covered = list(sets), [], set()
    need = set().union(*map(slot_pairs, sets)) if sets else set()
    while covered != need:
        best = max(rest, key=lambda s: len(slot_pairs(s) - covered))
        head.append(best)
        rest.remove(best)
        covered |= slot_pairs(best)
    return head + rest


def parse_class_sets(text):
    """'0-1-2;3-4-5' -> ((0, 1, 2), (3, 4, 5))."""
    return tuple(tuple(sorted(int(c) for c in s.split("-"))) for s in text.split(";") if s.strip())


def format_classes(classes):
    return "-".join(str(int(c)) for c in classes)


def task_set(config, num_classes):
    """Builds the TaskSet from `config` (k, num_held_out, held_out, held_out_seed, cover_slots)."""
    k = int(config.k)
    require(2 <= k <= num_classes, f"config.tasks.k must be in [2, {num_classes}], got {k}")
    total = math.comb(num_classes, k)
    listed = total <= MAX_LISTED
    every = list(itertools.combinations(range(num_classes), k)) if listed else None
    if config.get("held_out", ""):
        try:
            held = parse_class_sets(config.held_out)
        except ValueError:
            raise ConfigError(f"config.tasks.held_out must be class sets like '0-1-2;3-4-5', "
                              f"got {config.held_out!r}") from None
        for s in held:
            require(len(s) == k and all(0 <= c < num_classes for c in s),
                    f"config.tasks.held_out has an invalid class set {s} for k={k}")
    else:
        n = int(config.num_held_out)
        require(0 <= n < total, f"config.tasks.num_held_out must be in [0, {total}), got {n}")
        rng = np.random.default_rng(config.held_out_seed)
        if not listed:  # every (slot, class) pair is in countless other sets: nothing to cover
            held = tuple(sorted(random_sets(rng, num_classes, k, n)))
        elif config.get("cover_slots", False):
            held = tuple(sorted(draw_composable(every, n, rng)))
        else:
            held = tuple(every[i] for i in sorted(rng.choice(len(every), n, replace=False)))
    allowed = tuple(s for s in every if s not in set(held)) if listed else None
    return TaskSet(k, allowed, tuple(held), num_classes)


def draw_composable(every, n, rng):
    """`n` class sets drawn from `every` such that each (slot, class) pair of a drawn set is still
    held by some set not drawn: held-out sets are new combinations of slots the zoo can train."""
    count = pair_counts(every)
    held = []
    for i in rng.permutation(len(every)):
        if len(held) == n:
            break
        pairs = slot_pairs(every[i])
        if all(count[p] >= 2 for p in pairs):
            held.append(every[i])
            for p in pairs:
                count[p] -= 1
    require(len(held) == n, f"config.tasks.num_held_out={n}: only {len(held)} class sets can be "
            "held out with every (slot, class) pair left to train; lower it or set cover_slots=False")
    return held


def composable_folds(sets, folds, rng):
    """(fold of each of the distinct class `sets` [S], composable [S] bool) for cross-fitting.
    Composable: each (slot, class) pair of the set is held by some set outside its fold, the
    condition `draw_composable` gives held-out sets. Sets are placed in random order, each in the
    smallest fold that keeps every pair it shares with other sets held outside that fold."""
    count = pair_counts(sets)
    inside = [{} for _ in range(folds)]   # per fold: {pair: its sets holding the pair}
    fold, size = np.zeros(len(sets), int), [0] * folds
    for i in rng.permutation(len(sets)):
        pairs = [p for p in slot_pairs(sets[i]) if count[p] >= 2]
        order = sorted(range(folds), key=lambda f: (size[f], f))
        ok = [f for f in order if all(count[p] - inside[f].get(p, 0) >= 2 for p in pairs)]
        fold[i] = (ok or order)[0]
        size[fold[i]] += 1
        for p in slot_pairs(sets[i]):
            inside[fold[i]][p] = inside[fold[i]].get(p, 0) + 1
    composable = np.array([all(count[p] > inside[f][p] for p in slot_pairs(s))
                           for s, f in zip(sets, fold)], bool)
    return fold, composable


def task_indices(labels, classes):
    """Indices of images in `classes` and their local labels (0..k-1 in class-id order)."""
    classes = np.asarray(sorted(classes))
    idx = np.flatnonzero(np.isin(labels, classes))
    return idx, np.searchsorted(classes, labels[idx]).astype(np.int32)


def task_split(dataset, classes, split):
    """(images, local labels) of one task's 'train' or 'val' split."""
    require(split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}")
    x, y = (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_val, dataset.y_val)
    idx, local = task_indices(y, classes)
    return x[idx], local
