//! PyTorch's default initialisation of `nn.Conv2d` and `nn.Linear`, from a seed.
//!
//! PyTorch draws weights with `kaiming_uniform_(a=√5)`: the bound gain·√(3/fan_in), with
//! gain = √(2/(1+a²)), simplifies to 1/√fan_in. Biases are uniform in ±1/√fan_in as well, with the
//! fan-in of their weight. The distribution is PyTorch's; the numbers are not (a seed here does
//! not reproduce `torch.manual_seed`).

use rand::rngs::StdRng;
use rand::Rng;

/// `len` values uniform in ±1/√fan_in.
pub fn uniform_fan_in(rng: &mut StdRng, len: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..len).map(|_| rng.random_range(-bound..bound)).collect()
}
