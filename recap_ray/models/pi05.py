"""The pi0.5 / pi0.6 policy (openpi `Pi0` with pi05=True, pistar loss weighting), in Flax NNX.

Observation dict (what `recap_ray.transforms` produces, batched):
  images: {camera: uint8 (B, S, S, 3), or float in [-1, 1]} for every key of `config.image_keys` (uint8 is mapped to
    [-1, 1] on the device: `siglip.pixels`)
  image_masks: {camera: bool (B,)}
  tokenized_prompt: int32 (B, max_token_len); tokenized_prompt_mask: bool (B, max_token_len)
Actions are (B, action_horizon, action_dim), normalised and padded. Flow matching runs from
t = 1 (noise) to t = 0 (data); sampling is Euler with a prefix KV cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recap_ray.models import augment, gemma, pi05_config, siglip

Observation = dict[str, Any]


def make_attn_mask(input_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """(B, N) valid tokens and (N,) block starts -> (B, N, N): query q sees key k iff cumsum(ar)[k] <= cumsum(ar)[q]."""
    ar = jnp.broadcast_to(ar_mask, input_mask.shape)
    cum = jnp.cumsum(ar, axis=1)
    allowed = cum[:, None, :] <= cum[:, :, None]
    return allowed & input_mask[:, None, :] & input_mask[:, :, None]


def posemb_sincos(t: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sine-cosine embedding (B, dim) of scalar times t (B,), periods geometric in [min, max]."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    x = jnp.einsum("i,j->ij", t, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def sample_time(rng: jax.Array, batch: int) -> jax.Array:
    """Training times t = 0.999 * Beta(1.5, 1) + 0.001, one per sample."""
    return jax.random.beta(rng, 1.5, 1.0, (batch,)) * 0.999 + 0.001


class PaliGemma(nnx.Module):
    """Container giving the `PaliGemma/img` and `PaliGemma/llm` paths."""

    def __init__(self, img: siglip.Siglip, llm: gemma.Gemma):
        self.img = img
        self.llm = llm


class Pi05(nnx.Module):
    """pi0.5: prefix (3 cameras + prompt) through Gemma 2B, action tokens through the action expert."""

    def __init__(self, config: pi05_config.Pi05Config, *, rngs: nnx.Rngs):
        self.config = config
        pg, ae = config.paligemma, config.action_expert
        img = siglip.Siglip(config.siglip, rngs=rngs)
        llm = gemma.Gemma([pg, ae], [False, True], vocab_size=config.vocab_size, dtype=config.dtype,
                          param_dtype=config.param_dtype, remat=config.remat, rngs=rngs)  # fmt: skip
        self.PaliGemma = PaliGemma(img, llm)
        kw = {"param_dtype": jnp.dtype(config.param_dtype), "rngs": rngs}
        self.action_in_proj = nnx.Linear(config.action_dim, ae.width, **kw)
        self.time_mlp_in = nnx.Linear(ae.width, ae.width, **kw)
        self.time_mlp_out = nnx.Linear(ae.width, ae.width, **kw)
        self.action_out_proj = nnx.Linear(ae.width, config.action_dim, **kw)

    def embed_prefix(self, obs: Observation) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Image and prompt tokens (B, P, D0), their validity (B, P) and ar flags (P,) (all False)."""
        tokens, masks = [], []
        for key in self.config.image_keys:
            if key not in obs["images"]:
                raise KeyError(f"observation has no image {key!r}; has {sorted(obs['images'])}")
            t = self.PaliGemma.img(siglip.pixels(obs["images"][key]))
            tokens.append(t)
            masks.append(jnp.broadcast_to(obs["image_masks"][key][:, None], t.shape[:2]))
        tokens.append(self.PaliGemma.llm.embed(obs["tokenized_prompt"]))
        masks.append(obs["tokenized_prompt_mask"])
        tokens = jnp.concatenate(tokens, axis=1)
        return tokens, jnp.concatenate(masks, axis=1).astype(bool), jnp.zeros(tokens.shape[1], bool)

    def embed_suffix(self, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Action tokens (B, H, D1), validity (B, H), ar flags (H,) and the adaRMS time condition (B, D1)."""
        tokens = self.action_in_proj(x_t)
        emb = posemb_sincos(t, self.action_in_proj.out_features)
        cond = nnx.swish(self.time_mlp_out(nnx.swish(self.time_mlp_in(emb))))
        h = x_t.shape[1]
        ar = jnp.zeros(h, bool).at[0].set(True)
        return tokens, jnp.ones(tokens.shape[:2], bool), ar, cond

    def velocity(self, obs: Observation, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """v(x_t, t) (B, H, action_dim) from one full pass over prefix + suffix (no cache)."""
        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(x_t, t)
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        mask = make_attn_mask(input_mask, jnp.concatenate([prefix_ar, suffix_ar]))
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, out), _ = self.PaliGemma.llm([prefix, suffix], positions, mask, [None, cond])
        return self.action_out_proj(out[:, -x_t.shape[1]:])

    def loss_per_step(self, obs: Observation, actions: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """Unweighted flow-matching loss per sample and action step (B, H), what openpi's `compute_loss` returns."""
        te = t[:, None, None]
        x_t = te * noise + (1 - te) * actions
        v_t = self.velocity(obs, x_t, t)
        return jnp.mean(jnp.square(v_t - (noise - actions)), axis=-1)

    def loss(self, obs: Observation, actions: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """Flow-matching loss for given noise and times: scalar (pistar-weighted when config.pistar)."""
        per_sample = jnp.mean(self.loss_per_step(obs, actions, noise, t), axis=1)
        if self.config.pistar:
            per_sample = per_sample * 0.5 * jnp.exp(-0.5 * (1 - t))
        return jnp.mean(per_sample)

    def compute_loss(self, rng: jax.Array, obs: Observation, actions: jax.Array, *, train: bool = False) -> jax.Array:
        """openpi's compute_loss: rng splits into (augmentation, noise, time); train=True augments the images
        (`augment`); eps ~ N(0, I), t ~ 0.999 Beta(1.5, 1) + 0.001. The same key gives openpi's draws."""
        augment_rng, noise_rng, time_rng = jax.random.split(rng, 3)
        if train:  # on [-1, 1] images, as openpi's (its Observation.from_dict maps uint8 first)
            obs = {**obs, "images": augment.augment(augment_rng, {k: siglip.pixels(v) for k, v in obs["images"].items()})}
        noise = jax.random.normal(noise_rng, actions.shape)
        return self.loss(obs, actions, noise, sample_time(time_rng, actions.shape[0]))

    def prefill(self, obs: Observation) -> tuple[gemma.KVCache, jax.Array]:
        """Prefix-only pass through expert 0: per-layer K/V (depth, B, P, K, H) and prefix validity (B, P)."""
        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        _, kv = self.PaliGemma.llm([prefix, None], positions, make_attn_mask(prefix_mask, prefix_ar))
        return kv, prefix_mask

    def cached_velocity(self, kv: gemma.KVCache, prefix_mask: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """v(x_t, t) running only the suffix through expert 1 against the cached prefix."""
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(x_t, t)
        b, s = suffix_mask.shape
        prefix_part = jnp.broadcast_to(prefix_mask[:, None, :], (b, s, prefix_mask.shape[1]))
        mask = jnp.concatenate([prefix_part, make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, out), _ = self.PaliGemma.llm([None, suffix], positions, mask, [None, cond], kv_cache=kv)
        return self.action_out_proj(out[:, -x_t.shape[1]:])

    def sample_actions(
        self,
        rng: jax.Array,
        obs: Observation,
        *,
        num_steps: int = 10,
        noise: jax.Array | None = None,
        uncond_obs: Observation | None = None,
        cfg_beta: float = 1.0,
    ) -> jax.Array:
        """Euler-integrate from noise at t = 1 to t = 0 in `num_steps` steps; (B, H, action_dim).

        With `uncond_obs` (the same observations with the advantage clause dropped), classifier-free
        guidance: v = v_u + cfg_beta * (v_c - v_u), both halves run as one double-size batch.
        """
        batch = obs["tokenized_prompt"].shape[0]
        if noise is None:
            noise = jax.random.normal(rng, (batch, self.config.action_horizon, self.config.action_dim))
        guided = uncond_obs is not None
        if guided:
            obs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), obs, uncond_obs)
        kv, prefix_mask = self.prefill(obs)
        dt = -1.0 / num_steps

        def velocity(x_t: jax.Array, t: jax.Array) -> jax.Array:
            if not guided:
                return self.cached_velocity(kv, prefix_mask, x_t, jnp.broadcast_to(t, (batch,)))
            v = self.cached_velocity(kv, prefix_mask, jnp.concatenate([x_t, x_t]), jnp.broadcast_to(t, (2 * batch,)))
            v_c, v_u = v[:batch], v[batch:]
            return v_u + cfg_beta * (v_c - v_u)

        def step(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            x_t, t = carry
            return x_t + dt * velocity(x_t, t), t + dt

        x_0, _ = jax.lax.fori_loop(0, num_steps, step, (noise, jnp.asarray(1.0, jnp.float32)))
        return x_0
