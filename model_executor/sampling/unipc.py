"""UniPC (bh2, order 2, x0 form, flow sigmas) as used by Helios-Base and Helios-Mid (spec §4.5).

The solver state belongs to one request and one stage (the multistep history is reset at
every chunk and every pyramid stage), so many requests can step independently and in any
interleaving. Coefficients are computed on the host as 0-dim float64 tensors and applied to the
latents in their own dtype, as in the reference: a 0-dim host tensor reaches a device kernel
as a scalar, so no step copies anything to the device or waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SOLVER_ORDER = 2


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma and sigma clamped away from 0."""
    return torch.log(1 - sigma) - torch.log(torch.clamp(sigma, min=1e-8))


@dataclass
class UniPCState:
    sigmas: torch.Tensor
    """float64 [num_steps + 1], the stage's sigmas ending in 0."""
    disable_corrector: tuple[int, ...] = ()
    step_index: int = 0
    x0_history: list[torch.Tensor] = field(default_factory=list)
    """The last (up to two) x0 predictions, oldest first."""
    last_sample: torch.Tensor | None = None
    lower_order_nums: int = 0
    this_order: int = 1

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance the sample by one step given the model's velocity at the current sigma."""
        i = self.step_index
        sigma = self.sigmas[i]
        x0 = sample - sigma * velocity
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            sample = self._correct(x0, sample)
        self.x0_history = (self.x0_history + [x0])[-SOLVER_ORDER:]
        # lower_order_final: the last step is first order; the first steps warm up the history.
        self.this_order = min(SOLVER_ORDER, self.num_steps - i, self.lower_order_nums + 1)
        self.last_sample = sample
        next_sample = self._predict(sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, SOLVER_ORDER)
        self.step_index += 1
        return next_sample

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """UniP: from x at sigma[i] to sigma[i+1] using x0 predictions i (and i-1)."""
        i = self.step_index
        sigma_next, sigma_now = self.sigmas[i + 1], self.sigmas[i]
        m_now = self.x0_history[-1]
        h = _log_snr(sigma_next) - _log_snr(sigma_now)
        h_phi_1 = torch.expm1(-h)
        alpha_next = 1 - sigma_next
        x_next = torch.clamp(sigma_next, min=1e-8) / torch.clamp(sigma_now, min=1e-8) * x - alpha_next * h_phi_1 * m_now
        if self.this_order == 2:
            r = (_log_snr(self.sigmas[i - 1]) - _log_snr(sigma_now)) / h
            slope = (self.x0_history[-2] - m_now) / r
            x_next = x_next - alpha_next * h_phi_1 * (0.5 * slope)  # bh2: B(h) = expm1(-h) = h_phi_1
        return x_next.to(x.dtype)

    def _correct(self, x0_new: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """UniC: re-estimate x at sigma[i] with the new x0 prediction (order of the last predictor)."""
        i = self.step_index
        sigma_now, sigma_before = self.sigmas[i], self.sigmas[i - 1]
        m_before = self.x0_history[-1]
        h = _log_snr(sigma_now) - _log_snr(sigma_before)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        alpha_now = 1 - sigma_now
        base = (
            torch.clamp(sigma_now, min=1e-8) / torch.clamp(sigma_before, min=1e-8) * self.last_sample
            - alpha_now * h_phi_1 * m_before
        )
        change = x0_new - m_before
        if self.this_order == 1:
            rho = torch.tensor([0.5], dtype=x.dtype)
            return (base - alpha_now * h_phi_1 * (rho[-1] * change)).to(x.dtype)
        r = (_log_snr(self.sigmas[i - 2]) - _log_snr(sigma_before)) / h
        slope = (self.x0_history[-2] - m_before) / r
        rho = self._corrector_weights(r, hh, h_phi_1).to(x.dtype)  # on the host; rho[k] are scalars
        return (base - alpha_now * h_phi_1 * (rho[0] * slope + rho[-1] * change)).to(x.dtype)

    @staticmethod
    def _corrector_weights(r: torch.Tensor, hh: torch.Tensor, h_phi_1: torch.Tensor) -> torch.Tensor:
        """Solve [[1, 1], [r, 1]] rho = b, with b_k = k! g_k / B(h) (bh2, spec §4.5)."""
        g_1 = h_phi_1 / hh - 1
        g_2 = g_1 / hh - 0.5
        b = torch.tensor([g_1 / h_phi_1, 2 * g_2 / h_phi_1])
        rks = torch.tensor([r, 1.0])
        system = torch.stack([torch.ones_like(rks), rks])
        return torch.linalg.solve(system, b)
