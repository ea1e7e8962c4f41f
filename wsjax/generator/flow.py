"""Conditional flow matching in the generator's latent: diverse samples of W given (D, R).

A small MLP learns the velocity v(z_t, t | c) of the straight path from Gaussian noise to a
train snapshot's latent (rectified flow / CFM, Lipman et al. 2023); sampling integrates it with
Euler steps. The condition c is [class features, Fourier features of log loss] (G.pt's prompt).
Latents are divided by one scalar (their RMS), not whitened per direction.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class Denoiser(nn.Module):
    hidden: int = 512
    depth: int = 3

    @nn.compact
    def __call__(self, z, t, cond):
        freqs = 2.0 ** jnp.arange(8) * jnp.pi
        temb = jnp.concatenate([jnp.sin(freqs * t[:, None]), jnp.cos(freqs * t[:, None])], -1)
        h = jnp.concatenate([z, cond, temb], -1)
        for _ in range(self.depth):
            h = nn.gelu(nn.Dense(self.hidden)(h))
        return nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros)(h)


def _loss(module, params, z1, cond, key):
    k0, k1 = jax.random.split(key)
    z0 = jax.random.normal(k0, z1.shape)
    t = jax.random.uniform(k1, (z1.shape[0],))
    zt = (1 - t[:, None]) * z0 + t[:, None] * z1
    v = module.apply({"params": params}, zt, t, cond)
    return jnp.mean((v - (z1 - z0)) ** 2)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=3)
def _train_chunk(module, tx, batch_size, state, z, cond, keys):
    """One step per key (lax.scan) on minibatches of (z [n, d], cond [n, c]): (state, losses)."""
    def step(state, key):
        params, opt_state = state
        kb, kl = jax.random.split(key)
        idx = jax.random.randint(kb, (batch_size,), 0, z.shape[0])
        loss, grads = jax.value_and_grad(functools.partial(_loss, module))(
            params, z[idx], cond[idx], kl)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.lax.scan(step, state, keys)


def train(z, cond, *, key, hidden, depth, steps, batch_size, learning_rate, chunk=100):
    """(params, scale, losses [steps]) of a denoiser fitted to latents z [n, d] given cond [n, c]."""
    scale = float(np.sqrt(np.mean(np.square(z)))) or 1.0
    module = Denoiser(hidden, depth)
    k_init, k_train = jax.random.split(key)
    params = module.init(k_init, jnp.zeros((1, z.shape[1])), jnp.zeros((1,)),
                         jnp.zeros((1, cond.shape[1])))["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=1e-4)
    state = (params, tx.init(params))
    zj, cj = jnp.asarray(z / scale), jnp.asarray(cond)
    losses = []
    for i in range(0, steps, chunk):
        keys = jax.random.split(jax.random.fold_in(k_train, i), min(chunk, steps - i))
        state, loss = _train_chunk(module, tx, batch_size, state, zj, cj, keys)
        losses.append(np.asarray(loss))
    return state[0], scale, np.concatenate(losses)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _sample(module, params, cond, key, num_steps):
    z = jax.random.normal(key, (cond.shape[0], params["Dense_%d" % module.depth]["kernel"].shape[1]))
    dt = 1.0 / num_steps

    def step(z, i):
        t = jnp.full((z.shape[0],), i * dt)
        return z + dt * module.apply({"params": params}, z, t, cond), None

    return jax.lax.scan(step, z, jnp.arange(num_steps))[0]


def sample(params, scale, cond, *, key, hidden, depth, num_steps):
    """Latents [n, d], one per condition row of cond [n, c] (Euler, `num_steps` steps)."""
    return np.asarray(_sample(Denoiser(hidden, depth), params, jnp.asarray(cond), key, num_steps)) * scale
