"""ctvlp.reports.rules: tricky sentences (negation, uncertainty, several organs, synonyms)."""

from __future__ import annotations

import pytest

from ctvlp.anatomy import CHEST, CHEST_ABDOMEN
from ctvlp.reports import NORMAL_TEMPLATE, RuleReportParser, parse_report

ANATOMIES = list(CHEST_ABDOMEN)
PARSER = RuleReportParser(ANATOMIES)

# (findings sentence, {anatomy: expected label}); anatomies not listed must be "not mentioned".
CASES = [
    # negation
    ("No pleural effusion.", {"lung": 0}),
    ("Pleural effusion is not seen.", {"lung": 0}),
    ("The pancreas is unremarkable.", {"pancreas": 0}),
    ("Kidneys are within normal limits.", {"kidney": 0}),
    ("There is no evidence of splenomegaly.", {"spleen": 0}),
    ("Heart contour, size are natural. Pericardial effusion-thickening was not observed.", {"heart": 0}),
    ("Gallbladder negative for stones.", {"gallbladder": 0}),
    # uncertainty counts as abnormal, even phrased with a negation
    ("Pulmonary nodule cannot be excluded.", {"lung": 1}),
    ("Possible small bowel dilatation.", {"small intestine": 1}),
    ("Findings suspicious for portal vein thrombosis.", {"portal vein": 1}),
    ("A 5 mm nodule in the right adrenal gland, likely an adenoma.", {"adrenal gland": 1}),
    # pseudo-negation: the finding is there
    ("No change in the size of the right lower lobe nodule.", {"lung": 1}),
    # several organs in one sentence
    ("No pleural or pericardial effusion.", {"lung": 0, "heart": 0}),
    ("The liver and spleen are unremarkable.", {"liver": 0, "spleen": 0}),
    ("The liver is enlarged and the spleen is normal.", {"liver": 1, "spleen": 0}),
    ("Mild cardiomegaly and no pleural effusion.", {"heart": 1, "lung": 0}),
    ("Cardiomegaly without pericardial effusion.", {"heart": 1}),
    ("The pancreas is atrophic, but the adrenal glands are unremarkable.", {"pancreas": 1, "adrenal gland": 0}),
    ("Heart size is normal; small pericardial effusion.", {"heart": 1}),
    ("The kidneys are normal in size, with a small cyst in the left kidney.", {"kidney": 1}),
    ("The liver is normal in size with a 2 cm cyst.", {"liver": 1}),
    ("The liver is normal in size, contour, and attenuation.", {"liver": 0}),
    ("Liver: normal. Kidneys: small cyst in the left kidney.", {"liver": 0, "kidney": 1}),
    # synonyms
    ("Jejunal loops are dilated.", {"small intestine": 1}),
    ("Thickening of the terminal ileum.", {"small intestine": 1}),
    ("Duodenal diverticulum.", {"small intestine": 1}),
    ("Hepatic steatosis.", {"liver": 1}),
    ("Bilateral renal cysts.", {"kidney": 1}),
    ("Cholelithiasis.", {"gallbladder": 1}),
    ("Sigmoid diverticulosis.", {"colon": 1}),
    ("Rectal wall thickening.", {"colon": 1}),
    ("Urinary bladder wall is thickened.", {"bladder": 1}),
    ("Gastric wall thickening.", {"stomach": 1}),
    ("Small hiatal hernia.", {"esophagus": 1}),
    ("Esophageal wall thickening.", {"esophagus": 1}),
    ("Atherosclerotic calcification of the aortic wall.", {"aorta": 1}),
    ("Sclerotic focus in the sacral ala.", {"sacrum": 1}),
    ("Consolidation in the left lower lobe.", {"lung": 1}),
    ("Splenic vein is patent.", {"portal vein": 0}),
    # blockers: the word is there, the anatomy is not
    ("Scan obtained in the portal venous phase.", {}),
    ("The pulmonary artery is dilated.", {}),
]


@pytest.mark.parametrize("sentence,expected", CASES)
def test_tricky_sentences(sentence, expected):
    out = PARSER(sentence, "")
    for name in ANATOMIES:
        text, label = out[name]
        if name in expected:
            assert label == expected[name], (name, text)
            assert text != NORMAL_TEMPLATE.format(anatomy=name), f"{name} was mentioned"
        else:
            assert (text, label) == (NORMAL_TEMPLATE.format(anatomy=name), 0), (name, text)


def test_text_template_rule_and_per_organ_split():
    out = parse_report(
        "The liver is enlarged and the spleen is normal. No pleural effusion.",
        "Hepatomegaly.",
        ANATOMIES,
    )
    assert out["liver"] == ("Hepatomegaly. The liver is enlarged.", 1)  # impression first
    assert out["spleen"] == ("spleen shows no significant abnormalities. The spleen is normal.", 0)
    assert out["lung"][0].startswith("lung shows no significant abnormalities. No pleural effusion")
    assert out["kidney"] == ("kidney shows no significant abnormalities.", 0)
    for name, (text, label) in out.items():  # fVLM's rule: a text starts with the template iff normal
        assert text.startswith(NORMAL_TEMPLATE.format(anatomy=name)) == (label == 0)


def test_repeated_statements_are_deduplicated_and_order_follows_anatomies():
    out = parse_report("Cardiomegaly.", "Cardiomegaly.", list(CHEST))
    assert list(out) == list(CHEST)
    assert out["heart"] == ("Cardiomegaly.", 1)


def test_empty_report_and_missing_sections():
    out = parse_report(None, "", ["lung", "trachea"])
    assert out == {
        "lung": ("lung shows no significant abnormalities.", 0),
        "trachea": ("trachea shows no significant abnormalities.", 0),
    }
    assert parse_report("The trachea is deviated.", None, ["lung", "trachea"])["trachea"][1] == 1
    with pytest.raises(ValueError, match="anatomies"):
        RuleReportParser([])


def _synthetic_corpus(out, num_studies: int, seed: int):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ctvlp.synthetic", "--out", str(out), "--num-studies", str(num_studies), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def test_agreement_with_the_synthetic_labels_csv(tmp_path_factory):
    """Per-anatomy labels from the parser vs the labels CSV (disease columns -> anatomy via
    ctvlp.diseases): agreement >= 0.95 for every anatomy on a 100-study corpus."""
    import pandas as pd

    from ctvlp.diseases import SYNTHETIC

    root = _synthetic_corpus(tmp_path_factory.mktemp("synth_parser"), 100, 1)
    reports = pd.concat(pd.read_csv(p) for p in sorted(root.glob("dataset/radiology_text_reports/*.csv")))
    labels = pd.concat(pd.read_csv(p) for p in sorted(root.glob("dataset/multi_abnormality_labels/*.csv")))
    df = reports.merge(labels, on="VolumeName", validate="one_to_one")
    assert len(df) >= 100
    by_anatomy = {a: [d.name for d in SYNTHETIC if d.anatomy == a] for a in ANATOMIES}
    hits = dict.fromkeys(ANATOMIES, 0)
    for row in df.to_dict("records"):
        parsed = PARSER(row["Findings_EN"], row["Impressions_EN"])
        for name, diseases in by_anatomy.items():
            truth = int(max(row[d] for d in diseases))
            hits[name] += int(parsed[name][1] == truth)
    agreement = {a: h / len(df) for a, h in hits.items()}
    assert min(agreement.values()) >= 0.95, agreement
    positives = {a: int(df[by_anatomy[a]].max(axis=1).sum()) for a in ANATOMIES}
    assert sum(v > 0 for v in positives.values()) >= 10  # the corpus does exercise abnormal labels


# Issue 21: the cases that were silently wrong, (report, {anatomy: label}) on the chest grouping.
ISSUE21 = [
    ("Thoracic aorta is calcified, not dilated.", {"aorta": 1}),
    ("Calcified plaques in the aortic wall, no aneurysm.", {"aorta": 1}),
    ("The 6 mm nodule in the right upper lobe is not appreciably changed.", {"lung": 1}),
    ("Cardiomegaly, not significantly changed.", {"heart": 1}),
    ("Heart size is unchanged.", {"heart": 0}),
    ("Aortic caliber is stable compared to prior.", {"aorta": 0}),
    ("Stable cardiomegaly.", {"heart": 1}),
    ("There is moderate\ncardiomegaly.", {"heart": 1}),
    ("The thoracic aorta is\nnot dilated.", {"aorta": 0}),
    ("INDICATION: ? pneumothorax\nFINDINGS: Lungs are clear.", {"lung": 0}),
    ("HISTORY: aortic aneurysm.\nFINDINGS: Normal heart size.\nIMPRESSION: No acute findings.", {"heart": 0}),
    ("Normal lungs, normal heart, dilated aorta.", {"lung": 0, "heart": 0, "aorta": 1}),
    ("Pleural effusion is not seen.", {"lung": 0}),
    ("Pleural effusion without pneumothorax.", {"lung": 1}),
    ("No pleural effusion, mild cardiomegaly.", {"lung": 0, "heart": 1}),
    ("No consolidation, pleural effusion or pneumothorax.", {"lung": 0}),
    ("Ascending aorta measures 4.8 cm.", {"aorta": 1}),
    ("Ascending aorta measures 3.4 cm.", {"aorta": 0}),
    ("Cardiomegally and plueral effusion.", {"heart": 1, "lung": 1}),
    ("No suspicious pulmonary nodule.", {"lung": 0}),
    ("Lung mass suspicious for malignancy.", {"lung": 1}),
    ("Likely atelectasis at the right base.", {"lung": 1}),
    ("Aortic valve calcification.", {"heart": 1}),
]


HEDGED = ["Possible small left pleural effusion.", "A small pleural effusion cannot be excluded.",
          "Findings suspicious for early interstitial lung disease.", "Questionable pleural effusion."]


@pytest.mark.parametrize("policy,label", [("abnormal", 1), ("unknown", -1), ("normal", 0)])
@pytest.mark.parametrize("report", HEDGED)
def test_uncertainty_policy(report, policy, label):
    """A hedged finding is labelled by the policy; a stated one stays abnormal under every policy;
    the template starts a text exactly when its label is 0."""
    out = parse_report(report, None, list(CHEST), uncertainty=policy)
    assert out["lung"][1] == label
    assert out["lung"][0].startswith("lung shows no significant") == (label == 0)
    assert parse_report("Small left pleural effusion.", None, list(CHEST), uncertainty=policy)["lung"][1] == 1
    with pytest.raises(ValueError, match="ingest.report_uncertainty"):
        RuleReportParser(list(CHEST), uncertainty="maybe")


def test_mentioned_anatomies_skip_other_sections():
    parsed = RuleReportParser(list(CHEST)).parse("INDICATION: ? aortic dissection\nFINDINGS: Lungs clear.", None)
    assert parsed.mentioned == ["lung"]
    assert RuleReportParser(list(CHEST)).parse("Liver cyst.", None).mentioned == []


def test_labelled_sets():
    """Dev and independent_tune sets: abnormal recall and normal specificity >= 0.95 per anatomy.
    Held-out set: no worse than the figures of its one look (bench/results/report_labels.json,
    "after"; below the 0.95 goal for heart and esophagus, see bench/results/report_labels.md).
    independent_heldout is sealed: only bench/report_labels.py --heldout reads it."""
    import json
    from pathlib import Path

    from ctvlp.reports.score import read_labelled, score

    here = Path(__file__).parent / "labelled"
    parser = RuleReportParser(list(CHEST))
    for name in ("dev.tsv", "independent_tune.tsv"):
        for anatomy, s in score(parser, read_labelled(here / name), list(CHEST)).items():
            assert s["recall"] >= 0.95 and s["specificity"] >= 0.95, (name, anatomy, s)
    stored = Path(__file__).parents[3] / "bench/results/report_labels.json"
    recorded = json.loads(stored.read_text())["after"]["heldout"]["per_anatomy"]
    for anatomy, s in score(parser, read_labelled(here / "heldout.tsv"), list(CHEST)).items():
        for key in ("recall", "specificity"):
            assert s[key] >= recorded[anatomy][key], (anatomy, key, s[key], recorded[anatomy][key])


# Terse US-style reports and post-operative states, one group per rule (chest grouping;
# anatomies not listed are 0). Hedged items are in HEDGED_US below, scored under every policy.
US_STYLE = [
    # abbreviations and shorthand
    ("s/p CABG.", {"heart": 1}),
    ("Heart: nl size. No pericardial effusion.", {"heart": 0}),
    ("Heart size WNL.", {"heart": 0}),
    ("Aorta: Normal caliber w/o dissection.", {"aorta": 0}),
    ("RLL consolidation c/w pneumonia.", {"lung": 1}),
    ("No PTX or pleural effusion.", {"lung": 0}),
    ("Scattered GGOs.", {"lung": 1}),
    ("Mild CAD.", {"heart": 1}),
    ("Dense calcification of the LAD and RCA.", {"heart": 1}),
    ("AAA measuring 4.2 cm.", {"aorta": 1}),
    ("Eccentric thickening at the GEJ.", {"esophagus": 1}),
    # post-operative states and devices
    ("S/P AVR.", {"heart": 1}),
    ("TAVR in place.", {"heart": 1}),
    ("Post-CABG changes.", {"heart": 1}),
    ("Status post TEVAR without endoleak.", {"aorta": 1}),
    ("Endovascular stent graft in the descending thoracic aorta.", {"aorta": 1}),
    ("Status post Ivor Lewis esophagectomy with gastric pull-through.", {"esophagus": 1}),
    ("Post-esophagectomy changes.", {"esophagus": 1}),
    ("Gastric conduit in the posterior mediastinum.", {"esophagus": 1}),
    ("Nissen fundoplication.", {"esophagus": 1}),
    ("s/p RUL lobectomy.", {"lung": 1}),
    ("Wedge resection staple line in the left upper lobe.", {"lung": 1}),
    ("Status post aortic valve replacement and ascending aortic graft.", {"heart": 1, "aorta": 1}),
    ("Median sternotomy wires are intact.", {}),
    ("Esophagogastric anastomosis in the right upper chest, unremarkable.", {"esophagus": 1}),
    ("The gastric conduit is unremarkable.", {"esophagus": 1}),
    ("s/p talc pleurodesis on the right.", {"lung": 1}),
    ("s/p PCI with LAD stent.", {"heart": 1}),
    ("No mediastinal LAD.", {}),  # LAD: lymphadenopathy here, not the coronary artery
    ("AICD with leads in the RA and RV.", {"heart": 0}),
    # measurements, limits and stated reference ranges
    ("Ascending aorta 4.3 cm.", {"aorta": 1}),
    ("Ascending aort diameter 47 mm.", {"aorta": 1}),
    ("Asc aorta 36 mm (normal <40 mm).", {"aorta": 0}),
    ("Asc aorta 43 mm (normal <40 mm).", {"aorta": 1}),
    ("Ascending aorta is upper limits of normal in caliber at 4.0 cm.", {"aorta": 0}),
    ("Aortic diameters: root 33 mm, ascending 35 mm, arch 28 mm, descending 24 mm; all within normal limits.",
     {"aorta": 0}),
    ("Infrarenal abdominal aorta measures 3.2 cm.", {"aorta": 1}),
    ("Cardiothoracic ratio is 0.62.", {"heart": 1}),
    ("Cardiothoracic ratio 0.45.", {"heart": 0}),
    ("Pericardial thickness is 2 mm, normal.", {"heart": 0}),
    ("Esophageal wall thickness measured 11 mm in the distal third.", {"esophagus": 1}),
    ("Coronary calcium score 0.", {"heart": 0}),
    ("Agatston score of 120.", {"heart": 1}),
    # double negations
    ("The lungs are not without emphysematous changes.", {"lung": 1}),
    ("The aortic wall is not free of calcified plaques.", {"aorta": 1}),
    ("The esophagus is not unremarkable: there is a sliding hiatal hernia.", {"esophagus": 1}),
    ("Heart size is not abnormal.", {"heart": 0}),
    ("Non-dilated thoracic aorta.", {"aorta": 0}),
    ("The esophagus is non-distended.", {"esophagus": 0}),
    # verdicts: closing, before their noun, qualified
    ("Mediastinal main vascular structures, heart contour, size are normal.", {"heart": 0}),
    ("Pleural effusion and pneumothorax were not detected, nor was there pericardial effusion.",
     {"lung": 0, "heart": 0}),
    ("Both lungs are normally aerated, and no mass, nodule or infiltration was detected.", {"lung": 0}),
    ("Trace pericardial fluid, within physiologic limits.", {"heart": 0}),
    ("Physiologic pericardial fluid.", {"heart": 0}),
    ("Resolved RLL consolidation.", {"lung": 0}),
    ("The pericardial effusion seen in the previous study is no longer observed.", {"heart": 0}),
    ("Interval clearance of the right lower lobe opacity.", {"lung": 0}),
    ("Heart size is normal for age.", {"heart": 0}),
    ("The aorta is normal in diameter and enhancement.", {"aorta": 0}),
    ("The esophagus is normally distended.", {"esophagus": 0}),
    ("Thoracic esophagus calibration was normal.", {"esophagus": 0}),
    ("Lungs, heart and mediastinum: normal.", {"lung": 0, "heart": 0}),
    ("Nodule in the RUL, the lungs are otherwise clear.", {"lung": 1}),
    ("Pneumonia is unlikely.", {"lung": 0}),
    # which organ: effusions, lobes, blockers, multi-organ phrases
    ("Small effusions bilaterally.", {"lung": 1}),
    ("No pleural effusion, small pericardial effusion.", {"lung": 0, "heart": 1}),
    ("Heart: enlarged with a small effusion.", {"heart": 1}),
    ("A 1.5 cm hypodense nodule in the left thyroid lobe.", {}),
    ("Thyroid nodule in the right lobe.", {}),
    ("Pulmonary trunk is enlarged, suggesting pulmonary hypertension.", {}),
    ("Ascending aortic aneurysm 5.1 cm; cardiothoracic surgery referral is recommended.", {"aorta": 1}),
    ("Heavy aortic valve calcification, c/w aortic stenosis.", {"heart": 1}),
    ("No acute cardiopulmonary process.", {"lung": 0, "heart": 0}),
    ("Interstitial oedema with septal lines.", {"lung": 1}),
    ("Bibasilar atelectasis.", {"lung": 1}),
    ("Questionable small paraesophageal hernia.", {"esophagus": 1}),
    # UK spellings
    ("Small hiatus hernia.", {"esophagus": 1}),
    ("Oesophagitis.", {"esophagus": 1}),
    ("Haemopericardium.", {"heart": 1}),
    ("Calcified atheroma of the aortic arch.", {"aorta": 1}),
    # sectioned reports: labels lend to their line, inline headers, numbered impressions
    ("AORTA: Normal caliber. Scattered calcified plaque.", {"aorta": 1}),
    ("HEART: Normal size. Pacemaker leads in the right ventricle.", {"heart": 0}),
    ("FINDINGS:\nLungs: Clear. No nodules.\nAORTA:\nNormal caliber.", {"lung": 0, "aorta": 0}),
    ("INDICATION: r/o dissection. FINDINGS: No dissection. IMPRESSION: Normal aorta.", {"aorta": 0}),
    ("CT ANGIOGRAPHY CHEST FOR AORTIC DISSECTION\nFINDINGS: Lungs clear.", {"lung": 0}),
    ("IMPRESSION: 1) No pleural effusion 2) Cardiomegaly 3) Small hiatal hernia",
     {"lung": 0, "heart": 1, "esophagus": 1}),
    ("IMPRESSION:\n1. No acute pulmonary embolism.\n2. Ascending aortic aneurysm measuring 5.1 cm.", {"aorta": 1}),
    ("CLINICAL HISTORY: 70M w/ hx of CAD s/p CABG.\nCOMPARISON: None.\nFINDINGS:\nHeart: Normal size.", {"heart": 0}),
]


@pytest.mark.parametrize("report,expected", ISSUE21 + US_STYLE)
def test_issue21_cases(report, expected):
    out = parse_report(report, None, list(CHEST))
    for name in CHEST:
        assert out[name][1] == expected.get(name, 0), (name, out[name])


# Hedged findings, terse style: labelled by the policy (abnormal 1, unknown -1, normal 0).
HEDGED_US = [
    ("R/o pneumonia in the RLL.", "lung"),
    ("?Small pneumothorax at the right apex.", "lung"),
    ("Pneumonia cannot be entirely excluded.", "lung"),
    ("Cannot rule out small pericardial effusion.", "heart"),
    ("Findings suggest early pneumonia.", "lung"),
    ("A subtle intimal flap in the descending aorta is questionable.", "aorta"),
    ("Early pneumonia is suspected in the right lower lobe.", "lung"),
    ("Possible esophageal wall thickening.", "esophagus"),
]


@pytest.mark.parametrize("policy,label", [("abnormal", 1), ("unknown", -1), ("normal", 0)])
@pytest.mark.parametrize("report,anatomy", HEDGED_US)
def test_us_style_hedges_follow_the_policy(report, anatomy, policy, label):
    assert parse_report(report, None, list(CHEST), uncertainty=policy)[anatomy][1] == label


def test_a_stated_finding_before_a_hedge_stays_abnormal_under_every_policy():
    for policy in ("abnormal", "unknown", "normal"):
        out = parse_report("Esophageal wall thickening, may reflect underdistention.", None, list(CHEST), policy)
        assert out["esophagus"][1] == 1
