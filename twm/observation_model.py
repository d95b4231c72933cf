"""Observation model phi (spec §3): a CNN encoder to 32 categoricals of 32 classes, a transposed-CNN
decoder back to the 4-frame stack, and the observation losses (decoder NLL, entropy hinge,
consistency with the dynamics model's prior)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twm.config import Config, ConfigError

_LOG_2PI = math.log(2 * math.pi)


def kaiming_uniform_(weight: torch.Tensor, gain: float) -> None:
    """U(+-gain*sqrt(3/fan_in)): the released code's init (SiLU is given the ReLU gain sqrt 2)."""
    fan_in = weight[0].numel()
    bound = gain * math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def init_layer(layer: nn.Module, gain: float, bias: float = 0.0) -> nn.Module:
    kaiming_uniform_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class ObservationModel(nn.Module):
    """Encoder o -> logits (C, K) and decoder z -> mean of Normal(., 1) over the pixels."""

    def __init__(self, config: Config):
        super().__init__()
        cfg = config.obs
        if config.env.screen_size != 64:
            raise ConfigError(f"the observation model needs env.screen_size 64, got {config.env.screen_size}")
        self.num_categoricals, self.num_classes = cfg.num_categoricals, cfg.num_classes
        self.latent_dim = cfg.num_categoricals * cfg.num_classes
        frames, c, relu_gain = config.env.frame_stack, cfg.channels, math.sqrt(2)

        # Encoder: 4 convs k4 s2 (64 -> 31 -> 14 -> 6 -> 2), SiLU after each, then the MLP.
        conv_channels = (frames, c, 2 * c, 4 * c, 8 * c)
        convs = []
        for c_in, c_out in zip(conv_channels[:-1], conv_channels[1:], strict=True):
            convs += [init_layer(nn.Conv2d(c_in, c_out, 4, 2), relu_gain), nn.SiLU()]
        dims = (8 * c * 2 * 2, *cfg.encoder_hidden)
        fcs = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            fcs += [init_layer(nn.Linear(d_in, d_out), relu_gain), nn.SiLU()]
        fcs.append(init_layer(nn.Linear(dims[-1], self.latent_dim), 1.0))
        self.encoder = nn.Sequential(*convs, nn.Flatten(), *fcs)

        # Decoder: Linear to (768, 1, 1), then 4 transposed convs (1 -> 5 -> 13 -> 30 -> 64).
        # The transposed convs keep PyTorch's default init, the final bias included: the released code asks
        # for a 0.5 bias, but its init helper only touches Linear/Conv2d (spec §3).
        self.decoder_fc = nn.Sequential(init_layer(nn.Linear(self.latent_dim, cfg.decoder_hidden), relu_gain),
                                        nn.SiLU())
        deconv_channels = (cfg.decoder_hidden, 4 * c, 2 * c, c, frames)
        deconvs = []
        for i, (c_in, c_out) in enumerate(zip(deconv_channels[:-1], deconv_channels[1:], strict=True)):
            deconvs.append(nn.ConvTranspose2d(c_in, c_out, 5 if i < 2 else 6, 2))
            if i < 3:
                deconvs.append(nn.SiLU())
        self.decoder = nn.Sequential(*deconvs)

    def encode(self, o: torch.Tensor) -> torch.Tensor:
        """Float frames (..., 4, 64, 64) in [0, 1] -> logits (..., C, K)."""
        batch_shape = o.shape[:-3]
        logits = self.encoder(o.reshape(-1, *o.shape[-3:]))
        return logits.reshape(*batch_shape, self.num_categoricals, self.num_classes)

    def encode_for_acting(self, o: torch.Tensor) -> torch.Tensor:
        """`encode` for the few frames of acting (batch 1 in collection): the same logits up to float
        rounding, but a conv whose output has at most 16 positions (the last, 2x2) runs as an explicit
        im2col GEMM, which is several times faster than the library conv at this size on CPU."""
        x = o.reshape(-1, *o.shape[-3:])
        for layer in self.encoder:
            x = self.encode_for_acting_layer(layer, x)
        return x.reshape(*o.shape[:-3], self.num_categoricals, self.num_classes)

    @staticmethod
    def encode_for_acting_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One encoder layer as `encode_for_acting` runs it."""
        if isinstance(layer, nn.Conv2d) and _conv_positions(layer, x) <= 16:
            return _conv_as_gemm(layer, x)
        return layer(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Flat latent (..., C*K) -> pixel means (..., 4, 64, 64)."""
        batch_shape = z.shape[:-1]
        x = self.decoder_fc(z.reshape(-1, z.shape[-1]))
        x = self.decoder(x.reshape(*x.shape, 1, 1))
        return x.reshape(*batch_shape, *x.shape[1:])


def _conv_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Output height * width of an unpadded conv on x (B, C, H, W)."""
    (k, _), (stride, _) = conv.kernel_size, conv.stride
    return ((x.shape[-2] - k) // stride + 1) * ((x.shape[-1] - k) // stride + 1)


def _conv_as_gemm(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """An unpadded square-kernel conv as unfold + one GEMM against the weight viewed (out, in*k*k)."""
    (k, _), (stride, _) = conv.kernel_size, conv.stride
    B, height, width = x.shape[0], (x.shape[-2] - k) // stride + 1, (x.shape[-1] - k) // stride + 1
    columns = F.unfold(x, k, stride=stride).transpose(1, 2)  # (B, positions, in*k*k)
    y = F.linear(columns, conv.weight.flatten(1), conv.bias)  # (B, positions, out)
    return y.transpose(1, 2).reshape(B, -1, height, width)


# ------------------------------------------------------------------------------------ latents
def sample_index(logits: torch.Tensor, mode: str = "sample") -> torch.Tensor:
    """Class index per categorical: logits (..., C, K) -> int64 (..., C). "sample": temperature 1
    (Gumbel-max); "argmax": the mode (acting in the real env)."""
    if mode == "argmax":
        return logits.argmax(-1)
    if mode != "sample":
        raise ValueError(f"unknown latent sampling mode {mode!r}")
    u = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def one_hot_latent(logits: torch.Tensor, index: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """Flat one-hot latent (..., C*K) of class indices (..., C) drawn from logits (..., C, K). With
    straight_through the value stays exactly one-hot and the gradient is that of the probabilities
    (one_hot + (p - sg(p)), as the released OneHotCategoricalStraightThrough)."""
    # scatter, not F.one_hot: one_hot range-checks its indices with a host sync
    one_hot = torch.zeros_like(logits).scatter_(-1, index[..., None], 1.0)
    if straight_through:
        probs = logits.softmax(-1)
        one_hot = one_hot + (probs - probs.detach())
    return one_hot.flatten(-2)


def sample_latent(logits: torch.Tensor, mode: str = "sample") -> torch.Tensor:
    """One-hot latent (..., C*K) from logits (..., C, K).

    mode "straight_through": a sample with gradient probs - sg(probs) (WM training);
    "sample": a plain temperature-1 sample; "argmax": the mode (acting in the real env)."""
    straight_through = mode == "straight_through"
    return one_hot_latent(logits, sample_index(logits, "sample" if straight_through else mode), straight_through)


def latent_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy summed over the C categoricals: (..., C, K) -> (...)."""
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum((-1, -2))


# ------------------------------------------------------------------------------------- losses
def decoder_loss(o: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """-log N(o; mean, 1) summed over pixels, averaged over the batch dims."""
    nll = 0.5 * (o - mean).square() + 0.5 * _LOG_2PI
    return nll.flatten(-3).sum(-1).mean()


def encoder_entropy_loss(logits: torch.Tensor, coef: float,
                         threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Code: coef * relu(threshold - H_norm) on the batch-mean normalised entropy; paper form
    -coef * H_norm when threshold >= 1. Returns (loss, H_norm)."""
    num_categoricals, num_classes = logits.shape[-2:]
    h_norm = latent_entropy(logits).mean() / (num_categoricals * math.log(num_classes))
    loss = -coef * h_norm if threshold >= 1 else coef * F.relu(threshold - h_norm)
    return loss, h_norm


def consistency_loss(encoder_logits: torch.Tensor, prior_logits: torch.Tensor,
                     direction: str) -> torch.Tensor:
    """Cross-entropy between the encoder q (with gradient) and the dynamics prior p_hat (detached),
    summed over categoricals, averaged over batch x time.
    "code": -sum p_hat log q (released code); "paper": -sum q log p_hat (Eq. 3)."""
    log_q = encoder_logits.log_softmax(-1)
    log_p = prior_logits.detach().log_softmax(-1)
    if direction == "code":
        ce = -(log_p.exp() * log_q).sum((-1, -2))
    elif direction == "paper":
        ce = -(log_q.exp() * log_p).sum((-1, -2))
    else:
        raise ConfigError(f"obs.consistency_direction must be 'code' or 'paper', got {direction!r}")
    return ce.mean()
