//! The dispatch seam: where a validated call is routed to an implementation.
//!
//! Today every call runs on the scalar [`reference`](crate::reference); the SIMD backends
//! (AVX-512, AVX2+FMA, NEON) plug in here. Inputs reaching this module have been validated,
//! so nothing here can fail.

use crate::loss::{HardCrossEntropy, Outputs, SoftCrossEntropy, SoftInfoNce};
use crate::reference::{self, RefOutput, Request};
use crate::targets::Targets;
use crate::view::{Element, MatRef};

fn request<'o, T: Element>(outputs: &Outputs<'o, T>) -> Request<'o> {
    Request {
        grad_logits: outputs.grad_logits.is_some(),
        grad_targets: outputs.grad_targets.is_some(),
        upstream: outputs.upstream,
    }
}

/// Copies an `f64` reference result into the caller's buffers.
fn write<T: Element>(r: RefOutput, outputs: Outputs<'_, T>) -> f32 {
    if let Some(rows) = outputs.row_losses {
        for (o, &v) in rows.iter_mut().zip(&r.row_losses) {
            *o = v as f32;
        }
    }
    for (buf, vals) in [
        (outputs.grad_logits, &r.grad_logits),
        (outputs.grad_targets, &r.grad_targets),
    ] {
        if let Some(mut g) = buf {
            let c = g.cols();
            for i in 0..g.rows() {
                for (o, &v) in g.row_mut(i).iter_mut().zip(&vals[i * c..(i + 1) * c]) {
                    *o = T::from_f64(v);
                }
            }
        }
    }
    r.loss as f32
}

pub(crate) fn soft_infonce<T: Element>(
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    outputs: Outputs<'_, T>,
) -> f32 {
    let r = reference::soft_infonce(cfg, logits, targets, &request(&outputs))
        .expect("inputs were validated before dispatch");
    write(r, outputs)
}

pub(crate) fn soft_cross_entropy<T: Element>(
    cfg: &SoftCrossEntropy,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    outputs: Outputs<'_, T>,
) -> f32 {
    let r = reference::soft_cross_entropy(cfg, logits, targets, &request(&outputs))
        .expect("inputs were validated before dispatch");
    write(r, outputs)
}

pub(crate) fn hard_cross_entropy<T: Element>(
    cfg: &HardCrossEntropy,
    logits: MatRef<'_, T>,
    labels: &[u32],
    outputs: Outputs<'_, T>,
) -> f32 {
    let r = reference::hard_cross_entropy(cfg, logits, labels, &request(&outputs))
        .expect("inputs were validated before dispatch");
    write(r, outputs)
}
