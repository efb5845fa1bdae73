"""Synthetic German support feedback as a real Argilla 2.x ``to_disk`` export (the settings of the
bundled sample, generated ``records.json``), for tests that need more or hostile feedback.

``support_pair`` draws a varied customer question with a good and a bad answer from pools of
topics, situations and phrasings; ``write_export`` writes records whose ``preference`` and
``rating`` questions were answered by the given annotators (user ids).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "samples" / "argilla" / "feedback-de"

_TOPICS = {
    "Abschlag": ("meinen monatlichen Abschlag ändern", "Ihren Abschlag im Kundenportal unter „Verträge“ anpassen"),
    "Zählerstand": ("meinen Zählerstand melden", "den Zählerstand online oder in der App unter „Zählerstand melden“ eintragen"),
    "Umzug": ("meinen Umzug mitteilen", "den Umzug bis zu sechs Wochen vorher im Portal unter „Umzug“ melden"),
    "Kündigung": ("meinen Vertrag kündigen", "schriftlich oder im Portal unter „Vertrag beenden“ kündigen"),
    "Rechnung": ("meine Jahresabrechnung verstehen", "jede Position der Abrechnung im Portal unter „Rechnungen“ aufklappen"),
    "Tarif": ("in einen günstigeren Tarif wechseln", "den Tarif im Portal unter „Tarif wechseln“ vergleichen und ändern"),
    "Lastschrift": ("meine Bankverbindung ändern", "ein neues SEPA-Mandat im Portal unter „Zahlungsdaten“ hinterlegen"),
    "Passwort": ("mein Passwort zurücksetzen", "auf der Anmeldeseite „Passwort vergessen“ wählen und dem Link in der Mail folgen"),
    "Wärmepumpe": ("einen Wärmepumpentarif bekommen", "den Wärmepumpentarif mit einem separaten Zähler beantragen"),
    "Photovoltaik": ("meine PV-Anlage anmelden", "die Anlage beim Netzbetreiber und im Marktstammdatenregister anmelden"),
    "Gas": ("meinen Gasverbrauch senken", "die Heizkurve prüfen und den Verbrauch monatlich im Portal vergleichen"),
    "Mahnung": ("eine Mahnung klären", "uns die Zahlung mit Datum nennen, dann stoppen wir das Mahnverfahren"),
}  # fmt: skip
_OPENERS = ["Hallo,", "Guten Tag,", "Moin,", "Servus,", "Sehr geehrte Damen und Herren,", "Hi,", ""]
_ASKS = ["wie kann ich {a}?", "ich möchte {a}. Wie geht das?", "können Sie mir sagen, wie ich {a} kann?",
         "wo kann ich {a}?", "was muss ich tun, um {a}?", "geht es, {a}, und wenn ja wie?"]  # fmt: skip
_SITUATIONS = ["Wir sind gerade zu zweit eingezogen.", "Ich bin seit {n} Jahren Kunde.",
               "Die Frist läuft nächste Woche ab.", "Im Portal finde ich nichts dazu.",
               "Meine Nachbarin hat das schon gemacht.", "Das ist für die Wohnung meiner Eltern.",
               "Ich habe es schon zweimal versucht.", "", ""]  # fmt: skip
_CLOSINGS = ["Bei Fragen sind wir gern für Sie da.", "Die Änderung gilt ab dem nächsten Monat.",
             "Sie bekommen danach eine Bestätigung per Post.", "Das dauert nur wenige Minuten.",
             "Halten Sie bitte Ihre Vertragsnummer bereit.", ""]  # fmt: skip
_BAD = ["Keine Ahnung.", "Geht nicht.", "Please contact our hotline.", "Das steht doch im Portal.",
        "Dafür sind wir nicht zuständig.", "Versuchen Sie es später noch mal.",
        "Lesen Sie die AGB.", "Rufen Sie an."]  # fmt: skip


@dataclass
class Pair:
    prompt: str
    good: str
    bad: str
    annotators: list[str] = field(default_factory=list)
    preferred: str = "response_a"  # which response the annotators chose


def support_pair(rng: random.Random) -> Pair:
    topic = rng.choice(sorted(_TOPICS))
    ask, how = _TOPICS[topic]
    situation = rng.choice(_SITUATIONS).format(n=rng.randint(2, 30))
    prompt = " ".join(
        x for x in (rng.choice(_OPENERS), rng.choice(_ASKS).format(a=ask), situation) if x
    )
    good = f"Gerne helfe ich Ihnen: Sie können {how}. {rng.choice(_CLOSINGS)}".strip()
    return Pair(prompt=prompt[0].upper() + prompt[1:], good=good, bad=rng.choice(_BAD))


def record(i: int, pair: Pair) -> dict:
    answered = [{"value": pair.preferred, "user_id": u} for u in pair.annotators]
    rating = 5 if pair.preferred == "response_a" else 2  # of response A
    rated = [{"value": rating, "user_id": u} for u in pair.annotators]
    return {
        "id": f"syn-{i:05d}",
        "fields": {"prompt": pair.prompt, "response_a": pair.good, "response_b": pair.bad},
        "metadata": {"source": "synthetic"},
        "suggestions": {},
        "responses": {"rating": rated, "preference": answered},
        "vectors": {},
        "status": "completed",
    }


def write_export(folder: Path, pairs: list[Pair]) -> Path:
    """An Argilla ``to_disk`` folder with the sample's settings and one record per pair."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SAMPLE / ".argilla", folder / ".argilla", dirs_exist_ok=True)
    records = [record(i, p) for i, p in enumerate(pairs)]
    (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
    return folder
