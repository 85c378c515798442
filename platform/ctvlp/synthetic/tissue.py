"""Per-study tissue attenuation (HU): phase (non-contrast or portal-venous) and per-organ values.

Values follow textbook CT attenuation: air -1000, lung about -850, fat about -100, muscle about
45, unenhanced liver 55-68 (about 8 HU above the spleen), water/bile/urine 0-15, cancellous
bone 170-280, cortex 550-850. After intravenous contrast, blood, kidneys, spleen and liver
enhance. Everything is drawn per study, so absolute HU vary and findings have to be read
relative to the same study (e.g. liver vs. spleen for steatosis), as radiologists do.
"""

from __future__ import annotations

import numpy as np

CONTRAST_PROB = 0.4  # share of studies acquired after intravenous contrast
GAS_HU = -950.0


def sample_tissue(rng: np.random.Generator) -> dict[str, float]:
    """Draw one study's HU per tissue; key ``contrast`` is 1.0 for a contrast-enhanced study."""
    u = rng.uniform
    contrast = bool(rng.random() < CONTRAST_PROB)
    t: dict[str, float] = {
        "contrast": float(contrast),
        "air": -1000.0,
        "fat": u(-115, -85),
        "muscle": u(38, 55),
        "lung": u(-870, -825),
        "cortex": u(550, 850),
        "cancellous": u(170, 280),
        "rib": u(300, 450),
        "fluid": u(2, 12),
        "bile": u(0, 14),
        "urine": u(0, 12),
        "gas": GAS_HU,
        "stool": u(-220, -90),
        "disc": u(70, 100),
    }
    if contrast:
        blood = u(150, 225)
        liver = u(95, 115)
        t.update(
            liver=liver, spleen=liver + u(-5, 8), kidney=u(150, 185), pancreas=u(85, 105),
            adrenal=u(55, 70), blood=blood, heart=blood * u(0.9, 1.0),
            portal=float(np.clip(blood + u(-15, 15), 140, 235)), ivc=blood * u(0.75, 0.95),
            bowel_wall=u(60, 90),
        )
    else:
        blood = u(35, 48)
        liver = u(55, 68)
        t.update(
            liver=liver, spleen=liver - u(6, 12), kidney=u(28, 38), pancreas=u(38, 48),
            adrenal=u(22, 32), blood=blood, heart=blood, portal=blood + u(-3, 3), ivc=blood,
            bowel_wall=u(35, 45),
        )
    t["esophagus"] = t["bowel_wall"]
    return t
