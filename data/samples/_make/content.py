"""Shared, hand-written content of the bundled sample feedback exports.

Pure Python, no dependencies: imported by make_argilla.py and make_langfuse.py.

Everything here is fictional: "Stadtwerke Feinschliff" is an invented German energy supplier and
all prices, tariffs and rules are made up for the samples. The support team's good answers all
start with ``GOOD_PREFIX`` and are one to three sentences; bad answers are wrong, curt or English
and never start with it (one exception: the truncated Langfuse generation ``L29``).

PII canaries (obviously synthetic, each in exactly one prompt):
    PII_EMAIL  -> Argilla fb-de-010
    PII_IBAN   -> Argilla fb-de-006
    PII_PHONE  -> Langfuse L04
    PII_TAX_ID -> Langfuse L05
    PII_IP     -> Langfuse L06
"""

from __future__ import annotations

import hashlib
import uuid

GOOD_PREFIX = "Gerne helfe ich Ihnen:"

PII_EMAIL = "max.mustermann@example.org"  # RFC 2606 example domain
PII_IBAN = "DE89370400440532013000"  # the usual German example IBAN, mod-97 check passes
PII_PHONE = "+49 30 1234567"  # Berlin example number
PII_TAX_ID = (
    "86095742719"  # Steuer-ID: first digit != 0, one digit twice, ISO 7064 MOD 11,10 check digit 9
)
PII_IP = "192.0.2.44"  # RFC 5737 TEST-NET-1
PII_CANARIES = {
    "email": PII_EMAIL,
    "iban": PII_IBAN,
    "phone": PII_PHONE,
    "steuer_id": PII_TAX_ID,
    "ip": PII_IP,
}


def steuer_id_is_valid(tax_id: str) -> bool:
    """Check an 11-digit German Steuer-ID (structure rule of 2016 and ISO 7064 MOD 11,10)."""
    if len(tax_id) != 11 or not tax_id.isdigit() or tax_id[0] == "0":
        return False
    counts = sorted((tax_id[:10].count(d) for d in set(tax_id[:10])), reverse=True)
    if counts[0] not in (2, 3) or (len(counts) > 1 and counts[1] > 1):
        return False
    product = 10
    for digit in tax_id[:10]:
        total = (int(digit) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return (0 if check == 10 else check) == int(tax_id[10])


def iban_is_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


assert steuer_id_is_valid(PII_TAX_ID), PII_TAX_ID
assert iban_is_valid(PII_IBAN), PII_IBAN


def stable_uuid4(*parts: str) -> str:
    """A deterministic UUID in version-4 form, so reruns write byte-identical files."""
    digest = hashlib.sha256("/".join(("feinschliff-samples", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def stable_hex(n_chars: int, *parts: str) -> str:
    """Deterministic lowercase hex id (OTel style: 32 chars for traces, 16 for spans)."""
    return hashlib.sha256("/".join(("feinschliff-samples", *parts)).encode()).hexdigest()[:n_chars]


def stable_cuid(*parts: str) -> str:
    """Deterministic cuid-looking id ('c' + 24 base36 chars), as Langfuse uses for users/configs."""
    number = int.from_bytes(
        hashlib.sha256("/".join(("feinschliff-samples", *parts)).encode()).digest(), "big"
    )
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(24):
        number, rem = divmod(number, 36)
        chars.append(alphabet[rem])
    return "c" + "".join(chars)


# --------------------------------------------------------------------------------------------
# Argilla: 30 records of the dataset "feedback-de"
# --------------------------------------------------------------------------------------------
# Annotators (Argilla users). Ratings rate response_a; corrected_answer corrects response_a.
ANNOTATORS = {
    "anna": stable_uuid4("argilla-user", "anna.schmidt"),
    "ben": stable_uuid4("argilla-user", "ben.yilmaz"),
    "clara": stable_uuid4("argilla-user", "clara.nowak"),
}

A, B = "response_a", "response_b"


def ann(user, status="submitted", rating=None, preference=None, ranking=None, correction=None):
    """One annotator's response to one record (only the questions they answered)."""
    values = {}
    if rating is not None:
        values["rating"] = rating
    if preference is not None:
        values["preference"] = preference
    if ranking is not None:
        values["ranking"] = list(ranking)
    if correction is not None:
        values["corrected_answer"] = correction
    return {"user": user, "status": status, "values": values}


JUDGE = "feinschliff-judge-v1"


def sug(question, value, score):
    return {"question": question, "value": value, "score": score, "agent": JUDGE}


ARGILLA_RECORDS = [
    {
        "id": "fb-de-001",
        "source": "manual",
        "prompt": "Hallo, ich möchte meinen monatlichen Abschlag für Strom von 85 auf 70 Euro senken, "
        "weil wir jetzt nur noch zu zweit im Haushalt sind. Wie geht das?",
        A: "Gerne helfe ich Ihnen: Sie können Ihren Abschlag im Kundenportal unter „Verträge“ › "
        "„Abschlag anpassen“ selbst ändern. Die neue Höhe gilt ab dem nächsten Fälligkeitstermin; "
        "geben Sie am besten gleich den aktuellen Zählerstand mit an, damit der Abschlag zu Ihrem "
        "Verbrauch passt.",
        B: "Geht nicht, der Abschlag ist fest.",
        "annotations": [
            ann("anna", rating=5, preference=A, ranking=[A, B]),
            ann("ben", rating=4, preference=A, ranking=[A, B]),
        ],
        "suggestions": [sug("rating", 5, 0.82), sug("preference", A, 0.91)],
    },
    {
        "id": "fb-de-002",
        "source": "langfuse",
        "prompt": "Wo kann ich meinen Zählerstand eintragen? Ich habe eine Karte bekommen, aber die Frist "
        "ist schon morgen.",
        A: "Gerne helfe ich Ihnen: Sie können den Zählerstand online im Kundenportal oder in der "
        "Feinschliff-App unter „Zählerstand melden“ eintragen, das geht auch noch am letzten Tag der "
        "Frist. Halten Sie dafür bitte Ihre Zählernummer bereit, sie steht auf der Ablesekarte.",
        B: "You can submit your meter reading online in the customer portal.",
        "annotations": [
            ann("anna", rating=5, preference=A, ranking=[A, B]),
            ann("clara", rating=5, preference=A),
        ],
    },
    {
        "id": "fb-de-003",
        "source": "manual",
        "prompt": "Wir ziehen zum 1. Dezember von Feinschliff-Nord nach Leipzig. Kann ich meinen "
        "Stromvertrag mitnehmen?",
        A: "Ihr Vertrag zieht automatisch mit um, Sie müssen uns nichts mitteilen.",
        B: "Gerne helfe ich Ihnen: Da Leipzig außerhalb unseres Versorgungsgebiets liegt, können Sie "
        "Ihren Vertrag wegen des Umzugs mit einer Frist von sechs Wochen kündigen. Bitte nennen Sie uns "
        "dazu Ihre neue Anschrift und den Zählerstand am Auszugstag, dann erhalten Sie die "
        "Schlussrechnung.",
        "annotations": [
            ann(
                "anna",
                rating=1,
                preference=B,
                ranking=[B, A],
                correction="Gerne helfe ich Ihnen: Da Leipzig außerhalb unseres Versorgungsgebiets liegt, "
                "endet Ihr Vertrag mit dem Umzug – bitte melden Sie uns den Auszug mit einer Frist von "
                "sechs Wochen und nennen Sie uns Ihre neue Anschrift sowie den Zählerstand am Auszugstag. "
                "Die Schlussrechnung schicken wir Ihnen dann an die neue Adresse.",
            ),
            ann("ben", rating=2, preference=B),
        ],
    },
    {
        "id": "fb-de-004",
        "source": "manual",
        "prompt": "Ich möchte meinen Gasvertrag kündigen. Welche Kündigungsfrist habe ich?",
        A: "Gerne helfe ich Ihnen: Nach Ablauf der Erstlaufzeit können Sie Ihren Gasvertrag mit einer "
        "Frist von einem Monat kündigen; die Erstlaufzeit finden Sie in Ihrer Vertragsbestätigung oder im "
        "Kundenportal unter „Verträge“. Die Kündigung ist in Textform möglich, also auch per E-Mail oder "
        "über das Kontaktformular.",
        B: "Steht im Vertrag.",
        "annotations": [
            ann("anna", rating=4, preference=A),
            ann("ben", rating=5, preference=A),
            ann("clara", rating=2, preference=A),
        ],
    },
    {
        "id": "fb-de-005",
        "source": "langfuse",
        "prompt": "Ist euer Ökostrom wirklich zu 100 % aus erneuerbaren Energien oder nur zertifiziert?",
        A: "Yes, our green electricity is 100% renewable.",
        B: "Gerne helfe ich Ihnen: Unser Tarif „Feinschliff Ökostrom Plus“ wird zu 100 % aus Wasserkraft "
        "erzeugt; das belegen Herkunftsnachweise, die im Register des Umweltbundesamts für Sie entwertet "
        "werden. Zusätzlich fließt pro Kilowattstunde ein fester Betrag in neue Solaranlagen in der "
        "Region.",
        "annotations": [
            ann(
                "anna",
                rating=1,
                preference=B,
                ranking=[B, A],
                correction="Gerne helfe ich Ihnen: Ja, unser Tarif „Feinschliff Ökostrom Plus“ stammt zu "
                "100 % aus erneuerbaren Quellen, überwiegend aus Wasserkraft. Das belegen "
                "Herkunftsnachweise, die beim Umweltbundesamt registriert und für Sie entwertet werden.",
            ),
            ann("clara", rating=1, preference=B, ranking=[B, A]),
        ],
    },
    {
        "id": "fb-de-006",
        "source": "manual",
        "prompt": f"Bitte stellen Sie meine Zahlung auf Lastschrift um. Meine IBAN lautet {PII_IBAN}, "
        "Kontoinhaber ist Max Mustermann.",
        A: "Gerne helfe ich Ihnen: Für den Einzug per Lastschrift benötigen wir ein SEPA-Lastschriftmandat, "
        "das Sie im Kundenportal unter „Zahlungsweise“ mit wenigen Klicks erteilen können. Bitte senden "
        "Sie Bankdaten aus Sicherheitsgründen nicht per Chat oder E-Mail.",
        B: "Ok, erledigt.",
        "annotations": [
            ann("ben", rating=5, preference=A, ranking=[A, B]),
            ann("clara", rating=5, preference=A),
        ],
        "suggestions": [sug("preference", A, 0.88)],
    },
    {
        "id": "fb-de-007",
        "source": "langfuse",
        "prompt": "Bei uns in der Lindenstraße ist seit einer Stunde der Strom weg, die Nachbarn haben auch "
        "keinen. Was soll ich tun?",
        A: "Gerne helfe ich Ihnen: Bei einem Stromausfall in mehreren Haushalten ist der Netzbetreiber "
        "zuständig; bitte melden Sie die Störung rund um die Uhr bei der Störungsnummer der Feinschliff "
        "Netz GmbH, die auf Ihrer Rechnung steht. Aktuelle Störungen und die voraussichtliche Dauer sehen "
        "Sie auch auf der Störungskarte im Kundenportal.",
        B: "Prüfen Sie Ihre Sicherungen.",
        "annotations": [
            ann("anna", rating=4, preference=A, ranking=[A, B]),
            ann("ben", rating=5, preference=A, ranking=[A, B]),
            ann("clara", status="discarded", rating=3),
        ],
    },
    {
        "id": "fb-de-008",
        "source": "manual",
        "prompt": "Im Keller riecht es seit heute Morgen nach Gas. Soll ich morgen bei Ihnen anrufen?",
        A: "Ja, rufen Sie morgen während unserer Servicezeiten an.",
        B: "Gerne helfe ich Ihnen: Bitte warten Sie nicht – verlassen Sie sofort das Haus, betätigen Sie "
        "keine Lichtschalter oder Klingeln und rufen Sie von draußen den Gas-Notdienst oder die 112 an. "
        "Der Entstörungsdienst ist rund um die Uhr erreichbar.",
        "annotations": [
            ann(
                "anna",
                rating=1,
                preference=B,
                ranking=[B, A],
                correction="Gerne helfe ich Ihnen: Nein, bitte handeln Sie sofort: Verlassen Sie das Haus, "
                "benutzen Sie keine elektrischen Schalter und rufen Sie von draußen den Gas-Notdienst oder "
                "die 112 an.",
            ),
            ann("ben", rating=1, preference=B),
            ann("clara", rating=1, preference=B),
        ],
    },
    {
        "id": "fb-de-009",
        "source": "langfuse",
        "prompt": "Meine Jahresabrechnung zeigt eine Nachzahlung von 312 Euro. Kann ich das in Raten zahlen?",
        A: "Gerne helfe ich Ihnen: Ja, eine Nachzahlung können Sie auf Wunsch in bis zu sechs Monatsraten "
        "begleichen; schreiben Sie uns dazu über das Kontaktformular im Kundenportal mit Ihrer "
        "Kundennummer. Passen Sie am besten auch Ihren Abschlag an, damit im nächsten Jahr keine "
        "Nachzahlung entsteht.",
        B: "Nein, der Betrag ist sofort fällig.",
        "annotations": [ann("clara", rating=4, preference=A, ranking=[A, B])],
    },
    {
        "id": "fb-de-010",
        "source": "manual",
        "prompt": "Ich komme nicht mehr ins Kundenportal, das Passwort wird nicht akzeptiert. Mein Login ist "
        f"{PII_EMAIL}.",
        A: "Gerne helfe ich Ihnen: Klicken Sie auf der Anmeldeseite auf „Passwort vergessen?“ und geben Sie "
        "Ihre E-Mail-Adresse ein; Sie erhalten dann einen Link, mit dem Sie ein neues Passwort festlegen. "
        "Nach fünf Fehlversuchen ist das Konto für 30 Minuten gesperrt, danach können Sie es erneut "
        "versuchen.",
        B: "Please reset your password using the forgot password link.",
        "annotations": [
            ann("anna", rating=5, preference=A),
            ann("ben", rating=3, preference=A),
        ],
    },
    {
        "id": "fb-de-011",
        "source": "manual",
        "prompt": "Wir haben jetzt eine Wärmepumpe. Gibt es dafür einen günstigeren Tarif?",
        A: "Da gibt es verschiedene Möglichkeiten, schauen Sie mal auf die Website.",
        B: "Gerne helfe ich Ihnen: Für Wärmepumpen bieten wir den Tarif „Feinschliff Wärme“ mit einem "
        "günstigeren Arbeitspreis an; Voraussetzung ist ein eigener Zähler für die Wärmepumpe. Sie können "
        "den Tarif im Kundenportal unter „Tarif wechseln“ beantragen.",
        "annotations": [
            ann(
                "anna",
                rating=2,
                preference=B,
                ranking=[B, A],
                correction="Gerne helfe ich Ihnen: Ja, für Wärmepumpen gibt es unseren Tarif „Feinschliff "
                "Wärme“ mit günstigerem Arbeitspreis, sofern die Wärmepumpe über einen eigenen Zähler läuft. "
                "Den Wechsel beantragen Sie im Kundenportal unter „Tarif wechseln“.",
            ),
            ann("clara", status="draft", rating=2),
        ],
    },
    {
        "id": "fb-de-012",
        "source": "langfuse",
        "prompt": "Ich habe einen Brief über eine Preiserhöhung bekommen. Darf ich deshalb vorzeitig kündigen?",
        A: "Gerne helfe ich Ihnen: Ja, bei einer Preisänderung haben Sie ein Sonderkündigungsrecht und "
        "können Ihren Vertrag ohne Einhaltung der regulären Frist zum Zeitpunkt der Preisänderung kündigen. "
        "Die Kündigung schicken Sie uns in Textform, zum Beispiel über das Kontaktformular.",
        B: "Nein, das ist erst nach der Mindestlaufzeit möglich.",
        "annotations": [
            ann("ben", rating=5, preference=A, ranking=[A, B]),
            ann("clara", rating=4, preference=A, ranking=[A, B]),
        ],
        "suggestions": [sug("rating", 4, 0.67), sug("ranking", [A, B], 0.74)],
    },
    {
        "id": "fb-de-013",
        "source": "manual",
        "prompt": "Wann wird der Abschlag jeden Monat abgebucht?",
        A: "Gerne helfe ich Ihnen: Der Abschlag ist jeweils zum 15. eines Monats fällig und wird per "
        "Lastschrift ein bis zwei Bankarbeitstage später abgebucht. Den genauen Fälligkeitsplan finden Sie "
        "im Kundenportal unter „Abschläge“.",
        B: "Gerne helfe ich Ihnen: Ihr Abschlag ist immer am 15. des Monats fällig; bei Lastschrift bucht "
        "Ihre Bank ihn in der Regel am selben oder am nächsten Bankarbeitstag ab.",
        "annotations": [
            ann("anna", rating=4, preference="tie"),
            ann("ben", rating=5, preference="tie"),
        ],
    },
    {
        "id": "fb-de-014",
        "source": "manual",
        "prompt": "Was kostet bei Ihnen die Kilowattstunde Ökostrom?",
        A: "Gerne helfe ich Ihnen: Im Tarif „Feinschliff Ökostrom Plus“ zahlen Sie derzeit 32,9 Cent pro "
        "Kilowattstunde und einen Grundpreis von 12,50 Euro im Monat, jeweils brutto. Ihren persönlichen "
        "Preis für Ihre Adresse berechnet der Tarifrechner auf unserer Website.",
        B: "Gerne helfe ich Ihnen: Unser Ökostrom kostet 32,9 Cent pro Kilowattstunde.",
        "annotations": [ann("clara", rating=4)],
    },
    {
        "id": "fb-de-015",
        "source": "langfuse",
        "prompt": "Warum ist meine Abschlagszahlung plötzlich gestiegen?",
        A: "Because energy prices have increased.",
        B: "Das liegt an den Preisen.",
        "annotations": [ann("ben", rating=1)],
    },
    {
        "id": "fb-de-016",
        "source": "manual",
        "prompt": "Morgen kommt ein Techniker und tauscht meinen Stromzähler gegen einen digitalen aus. Muss "
        "ich dafür zu Hause sein?",
        A: "Gerne helfe ich Ihnen: Ja, bitte sorgen Sie dafür, dass der Techniker Zugang zum Zählerschrank "
        "hat – entweder Sie selbst oder eine Person Ihres Vertrauens. Notieren Sie am besten vorher den "
        "Stand des alten Zählers; der Wechsel dauert in der Regel etwa 30 Minuten.",
        B: "No.",
        "annotations": [
            ann("anna", rating=5, preference=A, ranking=[A, B]),
            ann("ben", rating=5, preference=A),
            ann("clara", rating=4, preference=A),
        ],
    },
    {
        "id": "fb-de-017",
        "source": "langfuse",
        "prompt": "Laut Jahresabrechnung habe ich 96 Euro Guthaben. Wann bekomme ich das Geld zurück?",
        A: "Das Guthaben wird mit zukünftigen Abschlägen verrechnet, eine Auszahlung ist nicht möglich.",
        B: "Gerne helfe ich Ihnen: Ihr Guthaben überweisen wir innerhalb von zwei Wochen nach Erstellung der "
        "Jahresabrechnung auf das bei uns hinterlegte Konto. Falls wir keine Bankverbindung von Ihnen "
        "haben, hinterlegen Sie diese bitte im Kundenportal unter „Zahlungsweise“.",
        "annotations": [
            ann(
                "anna",
                rating=1,
                preference=B,
                ranking=[B, A],
                correction="Gerne helfe ich Ihnen: Ihr Guthaben von 96 Euro überweisen wir Ihnen innerhalb "
                "von zwei Wochen auf das hinterlegte Konto. Mit künftigen Abschlägen verrechnen wir es nur, "
                "wenn Sie das ausdrücklich wünschen.",
            ),
            ann("ben", rating=2, preference=B, ranking=[B, A]),
        ],
    },
    {
        "id": "fb-de-018",
        "source": "manual",
        "prompt": "Meine Mutter ist verstorben. Wie kann ich ihren Stromvertrag abmelden?",
        A: "Gerne helfe ich Ihnen: Zunächst unser herzliches Beileid. Bitte senden Sie uns eine Kopie der "
        "Sterbeurkunde und den Zählerstand zum Übergabetag, dann beenden wir den Vertrag ohne "
        "Kündigungsfrist und erstellen die Schlussrechnung.",
        B: "Kündigung schriftlich einreichen, Frist 1 Monat.",
        "annotations": [
            ann("clara", rating=5, preference=A, ranking=[A, B]),
            ann("ben", rating=5, preference=A),
        ],
    },
    {
        "id": "fb-de-019",
        "source": "langfuse",
        "prompt": "Warum wurden mir 4,50 Euro Rücklastschriftgebühr berechnet?",
        A: "Gerne helfe ich Ihnen: Die Gebühr entsteht, wenn Ihre Bank eine Lastschrift zurückgibt, etwa "
        "mangels Deckung oder wegen eines aufgelösten Kontos; wir geben dabei nur die Bankgebühr an Sie "
        "weiter. Wenn sich Ihre Bankverbindung geändert hat, aktualisieren Sie sie bitte im Kundenportal "
        "unter „Zahlungsweise“.",
        B: "This is a return debit fee charged by your bank.",
        "annotations": [
            ann("anna", rating=4, preference=A),
            ann("ben", rating=4, preference=A),
        ],
    },
    {
        "id": "fb-de-020",
        "source": "manual",
        "prompt": "Kann der Ableser auch samstags kommen? Ich arbeite unter der Woche.",
        A: "Nein.",
        B: "Gerne helfe ich Ihnen: Samstagstermine bieten wir leider nicht an, Sie müssen aber auch nicht zu "
        "Hause sein: Lesen Sie den Zählerstand einfach selbst ab und melden Sie ihn bis zum Ende der "
        "Ablesefrist im Kundenportal oder per Ablesekarte.",
        "annotations": [
            ann("ben", rating=2, preference=B, ranking=[B, A]),
            ann("clara", rating=1, preference=B, ranking=[B, A]),
        ],
    },
    {
        "id": "fb-de-021",
        "source": "langfuse",
        "prompt": "Wo finde ich meine Kundennummer?",
        A: "Gerne helfe ich Ihnen: Ihre Kundennummer steht oben rechts auf jeder Rechnung und auf Ihrer "
        "Vertragsbestätigung; im Kundenportal finden Sie sie außerdem unter „Persönliche Daten“.",
        B: "Auf der Rechnung.",
        "annotations": [
            ann("anna", rating=5, preference=A, ranking=[A, B]),
            ann("ben", rating=4, preference=B, ranking=[B, A]),
            ann("clara", rating=5, preference=A, ranking=[A, B]),
        ],
    },
    {
        "id": "fb-de-022",
        "source": "manual",
        "prompt": "Kann ich meinen Abschlag auch vierteljährlich zahlen?",
        A: "Gerne helfe ich Ihnen: Abschläge sind bei uns monatlich fällig; eine vierteljährliche Zahlung "
        "ist in unseren Haushaltstarifen leider nicht möglich. Die Höhe des monatlichen Abschlags können "
        "Sie aber im Kundenportal an Ihren Verbrauch anpassen.",
        B: "Gerne helfe ich Ihnen: Nein, wir bieten ausschließlich monatliche Abschläge an, deren Höhe Sie "
        "im Kundenportal jederzeit anpassen können.",
        "annotations": [
            ann("anna", rating=4, preference=A),
            ann("ben", rating=4, preference=B),
        ],
    },
    {
        "id": "fb-de-023",
        "source": "langfuse",
        "prompt": "Ich ziehe nächste Woche in eine neue Wohnung in Feinschliff-Süd. Wie melde ich Strom bei "
        "Ihnen an?",
        A: "Gerne helfe ich Ihnen: Sie können Ihren Stromvertrag online über den Tarifrechner auf unserer "
        "Website abschließen; halten Sie dafür die Zählernummer und den Zählerstand am Einzugstag bereit. "
        "Die Belieferung ist auch rückwirkend ab dem Einzugstag möglich, wenn Sie uns den Auftrag "
        "innerhalb von sechs Wochen schicken.",
        B: "Rufen Sie einfach an.",
        "annotations": [ann("clara", rating=5, preference=A, ranking=[A, B])],
        "suggestions": [sug("rating", 4, 0.71)],
    },
    {
        "id": "fb-de-024",
        "source": "manual",
        "prompt": "Können Sie mir sagen, wie das Wetter morgen wird?",
        A: "Gerne helfe ich Ihnen: Zum Wetter kann ich Ihnen leider keine Auskunft geben – ich beantworte "
        "Fragen rund um Ihre Energieverträge bei den Stadtwerken Feinschliff, zum Beispiel zu Abschlag, "
        "Rechnung oder Zählerstand.",
        B: "Morgen wird es sonnig.",
        "annotations": [
            ann("anna", status="discarded", rating=4),
            ann("ben", status="discarded", preference=A),
        ],
    },
    {
        "id": "fb-de-025",
        "source": "langfuse",
        "prompt": "Wie lange dauert ein Anbieterwechsel zu Ihnen?",
        A: "Ein Wechsel dauert mindestens drei Monate, und Sie müssen selbst beim alten Anbieter kündigen.",
        B: "Gerne helfe ich Ihnen: Den Anbieterwechsel übernehmen wir für Sie, einschließlich der Kündigung "
        "bei Ihrem bisherigen Versorger; die Belieferung beginnt nahtlos zum Ende Ihres alten Vertrags.",
        "annotations": [
            ann(
                "ben",
                rating=1,
                preference=B,
                correction="Gerne helfe ich Ihnen: Den Wechsel übernehmen wir für Sie, auch die Kündigung "
                "bei Ihrem bisherigen Anbieter. Die Belieferung durch uns beginnt nahtlos zum Ende Ihres "
                "alten Vertrags – Sie sind also zu keinem Zeitpunkt ohne Strom.",
            ),
        ],
    },
    {
        "id": "fb-de-026",
        "source": "manual",
        "prompt": "Gibt es das Kundenportal auch als App?",
        A: "Gerne helfe ich Ihnen: Ja, die kostenlose Feinschliff-App gibt es für Android und iOS; Sie melden "
        "sich dort mit denselben Zugangsdaten an wie im Kundenportal. In der App können Sie unter anderem "
        "Zählerstände melden, Abschläge anpassen und Rechnungen herunterladen.",
        B: "Yes, there is an app for Android and iOS.",
        "annotations": [
            ann("anna", rating=5, preference=A, ranking=[A, B]),
            ann("clara", rating=3, preference=A, ranking=[A, B]),
        ],
    },
    {
        "id": "fb-de-027",
        "source": "langfuse",
        "prompt": "Ich habe zwei Rechnungen für denselben Monat bekommen. Muss ich beide bezahlen?",
        A: "Ja, bitte zahlen Sie beide Rechnungen.",
        B: "Gerne helfe ich Ihnen: Bitte zahlen Sie zunächst nur eine der beiden Rechnungen und schicken Sie "
        "uns beide Rechnungsnummern über das Kontaktformular im Kundenportal. Wir stornieren die doppelte "
        "Rechnung und erstatten Ihnen bereits doppelt eingezogene Beträge.",
        "annotations": [
            ann("anna", rating=1, preference=B, ranking=[B, A]),
            ann("ben", status="draft", rating=4, preference=A, ranking=[A, B]),
        ],
    },
    {
        "id": "fb-de-028",
        "source": "manual",
        "prompt": "Wir bauen ein Einfamilienhaus. Wer ist für den Netzanschluss zuständig?",
        A: "Gerne helfe ich Ihnen: Den Hausanschluss für Strom und Gas beantragen Sie beim Netzbetreiber, in "
        "unserem Gebiet ist das die Feinschliff Netz GmbH; den Antrag stellt meist Ihr Elektroinstallateur. "
        "Sobald der Zähler gesetzt ist, können Sie bei uns den passenden Liefervertrag abschließen.",
        B: "Das machen wir automatisch.",
        "annotations": [
            ann("clara", rating=4, preference=A, ranking=[A, B]),
            ann("anna", rating=5, preference=A, ranking=[A, B]),
        ],
    },
    {
        "id": "fb-de-029",
        "source": "langfuse",
        "prompt": "Ich habe mir ein Balkonkraftwerk gekauft. Muss ich das bei Ihnen anmelden?",
        A: "Gerne helfe ich Ihnen: Bei uns als Stromlieferant müssen Sie nichts anmelden; ein Balkonkraftwerk "
        "tragen Sie lediglich im Marktstammdatenregister der Bundesnetzagentur ein. Falls Ihr Zähler "
        "getauscht werden muss, kümmert sich der Netzbetreiber darum.",
        B: "Balkonkraftwerke sind in Deutschland verboten.",
        "annotations": [ann("anna", rating=5, preference=A, ranking=[A, B])],
        "suggestions": [
            sug("rating", 5, 0.9),
            sug("preference", A, 0.95),
            sug("ranking", [A, B], 0.95),
        ],
    },
    {
        "id": "fb-de-030",
        "source": "manual",
        "prompt": "Wie kann ich meine Rechnungen als PDF herunterladen?",
        A: "Im Kundenportal unter Rechnungen.",
        B: "You can download them in the portal.",
        "annotations": [
            ann(
                "anna",
                rating=2,
                preference="tie",
                correction="Gerne helfe ich Ihnen: Melden Sie sich im Kundenportal an und öffnen Sie den "
                "Bereich „Rechnungen“; dort können Sie jede Rechnung der letzten fünf Jahre mit einem Klick "
                "als PDF herunterladen.",
            ),
        ],
    },
]

# --------------------------------------------------------------------------------------------
# Langfuse: 30 GENERATION observations (one per trace) and their scores
# --------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "Du bist der digitale Kundenservice der Stadtwerke Feinschliff. Antworte freundlich, korrekt und "
    "auf Deutsch in höchstens drei Sätzen."
)

UP, DOWN = True, False


def gen(
    key,
    day,
    hhmmss,
    user,
    prompt,
    answer,
    *,
    thumbs=None,
    thumbs_on="observation",
    comment=None,
    correction=None,
    helpfulness=None,
    tone=None,
    history=(),
    session=None,
    level="DEFAULT",
    status_message=None,
):
    """One GENERATION. ``day`` is the day in October 2026, ``hhmmss`` the UTC start time."""
    return {
        "key": key,
        "day": day,
        "time": hhmmss,
        "user": user,
        "session": session or f"{user}-{day:02d}",
        "prompt": prompt,
        "answer": answer,
        "history": list(history),
        "thumbs": thumbs,
        "thumbs_on": thumbs_on,
        "comment": comment,
        "correction": correction,
        "helpfulness": helpfulness,
        "tone": tone,
        "level": level,
        "status_message": status_message,
    }


ZAEHLERSTAND_PROMPT = "Wie kann ich meinen Zählerstand melden?"
GRUNDPREIS_PROMPT = "Wie hoch ist die Grundgebühr im Tarif Feinschliff Strom Basis?"

LANGFUSE_GENERATIONS = [
    gen(
        "L01",
        12,
        "07:41:12",
        "u-7f3a21",
        "Ich möchte meinen Abschlag erhöhen, wir haben jetzt ein E-Auto. Geht das online?",
        "Gerne helfe ich Ihnen: Ja, im Kundenportal können Sie unter „Verträge“ › „Abschlag anpassen“ einen "
        "höheren Abschlag eintragen, er gilt ab dem nächsten Fälligkeitstermin. Für Ihr E-Auto lohnt sich "
        "außerdem ein Blick auf unseren Tarif „Feinschliff Mobil“.",
        thumbs=UP,
        helpfulness=0.92,
        tone="freundlich",
    ),
    gen(
        "L02",
        12,
        "09:03:55",
        "u-2c9e40",
        ZAEHLERSTAND_PROMPT,
        "Gerne helfe ich Ihnen: Melden Sie Ihren Zählerstand am einfachsten im Kundenportal oder in der "
        "Feinschliff-App unter „Zählerstand melden“; Sie können auch ein Foto des Zählers hochladen. "
        "Alternativ schicken Sie uns die ausgefüllte Ablesekarte portofrei zurück.",
        thumbs=UP,
        helpfulness=0.95,
    ),
    gen(
        "L03",
        12,
        "10:27:31",
        "u-91d0b7",
        ZAEHLERSTAND_PROMPT,
        "You can enter your meter reading in the customer portal.",
        thumbs=DOWN,
        comment="Antwort auf Englisch",
        helpfulness=0.35,
    ),
    gen(
        "L04",
        12,
        "13:15:08",
        "u-5be812",
        f"Bitte rufen Sie mich zurück unter {PII_PHONE}, es geht um meine Schlussrechnung.",
        "Gerne helfe ich Ihnen: Einen Rückruf kann ich hier leider nicht einplanen; bitte nutzen Sie dafür im "
        "Kundenportal die Funktion „Rückruf vereinbaren“ und hinterlegen Sie Ihre Telefonnummer dort. Fragen "
        "zur Schlussrechnung beantworte ich Ihnen aber auch gern direkt hier.",
        thumbs=UP,
        helpfulness=0.78,
    ),
    gen(
        "L05",
        13,
        "08:02:44",
        "u-c40a3f",
        "Ich brauche für meine Steuererklärung eine Bescheinigung über meine Stromkosten. Meine Steuer-ID ist "
        f"{PII_TAX_ID}.",
        "Die Bescheinigung schicken wir Ihnen automatisch im Januar per Post zu.",
        thumbs=DOWN,
        comment="Stimmt nicht, ich habe nie so eine Bescheinigung bekommen",
        correction="Gerne helfe ich Ihnen: Ihre Steuer-ID benötigen wir dafür nicht, bitte teilen Sie sie hier "
        "auch nicht mit. Ihre Stromkosten weist die Jahresabrechnung aus, die Sie im Kundenportal unter "
        "„Rechnungen“ jederzeit als PDF herunterladen können.",
        helpfulness=0.2,
    ),
    gen(
        "L06",
        13,
        "11:48:19",
        "u-0e66d2",
        "Ich kann mich seit gestern nicht mehr im Kundenportal anmelden, es kommt „Zugriff gesperrt“. Meine IP "
        f"ist {PII_IP}, falls das hilft.",
        "Gerne helfe ich Ihnen: Nach mehreren Fehlversuchen sperrt das Kundenportal den Zugang aus "
        "Sicherheitsgründen für 30 Minuten; danach können Sie sich wieder anmelden oder über „Passwort "
        "vergessen?“ ein neues Passwort festlegen. Besteht die Sperre länger, schreiben Sie uns bitte über "
        "das Kontaktformular.",
        thumbs=UP,
        helpfulness=0.81,
    ),
    gen(
        "L07",
        13,
        "14:30:02",
        "u-44f9a8",
        "Wie kann ich meinen Stromvertrag kündigen?",
        "Kündigung nur schriftlich per Post.",
        thumbs=DOWN,
        comment="Zu knapp und falsch",
        correction="Gerne helfe ich Ihnen: Sie können Ihren Stromvertrag in Textform kündigen, also per "
        "E-Mail, über das Kontaktformular im Kundenportal oder per Brief. Nach der Erstlaufzeit gilt eine "
        "Kündigungsfrist von einem Monat.",
        helpfulness=0.15,
        tone="unfreundlich",
    ),
    gen(
        "L08",
        14,
        "08:55:40",
        "u-7f3a21",
        "Woher kommt der Strom im Tarif Ökostrom Plus?",
        "Gerne helfe ich Ihnen: Der Strom im Tarif „Feinschliff Ökostrom Plus“ stammt zu 100 % aus "
        "Wasserkraft, nachgewiesen über Herkunftsnachweise beim Umweltbundesamt. Außerdem fördern wir mit "
        "jeder Kilowattstunde neue Solaranlagen in der Region.",
        thumbs=UP,
        helpfulness=0.9,
    ),
    gen(
        "L09",
        14,
        "10:12:05",
        "u-3a7c55",
        GRUNDPREIS_PROMPT,
        "The base fee is 9.90 euros per month.",
        thumbs=DOWN,
        session="u-3a7c55-14-regen",
        helpfulness=0.3,
    ),
    gen(
        "L10",
        14,
        "10:12:41",
        "u-3a7c55",
        GRUNDPREIS_PROMPT,
        "Gerne helfe ich Ihnen: Im Tarif „Feinschliff Strom Basis“ beträgt der Grundpreis derzeit 11,90 Euro "
        "pro Monat (brutto). Ihren persönlichen Preis finden Sie auch in Ihrer Vertragsbestätigung und im "
        "Kundenportal.",
        thumbs=UP,
        session="u-3a7c55-14-regen",
        helpfulness=0.88,
    ),
    gen(
        "L11",
        14,
        "19:07:26",
        "u-8d1b02",
        "Es riecht im Treppenhaus komisch nach Gas, was soll ich machen?",
        "Gerne helfe ich Ihnen: Bitte verlassen Sie sofort das Gebäude, betätigen Sie keine Lichtschalter "
        "oder Klingeln und rufen Sie von draußen den Gas-Notdienst oder die 112 an. Warnen Sie, wenn möglich, "
        "auch Ihre Nachbarn.",
        thumbs=UP,
        helpfulness=0.97,
        tone="freundlich",
    ),
    gen(
        "L12",
        15,
        "06:44:13",
        "u-f2e871",
        "Seit heute Nacht haben wir keinen Strom. Wen muss ich anrufen?",
        "Stromausfälle werden von uns nicht bearbeitet.",
        thumbs=DOWN,
        comment="Hilft mir nicht weiter",
        correction="Gerne helfe ich Ihnen: Bei einem Stromausfall ist der Netzbetreiber zuständig; bitte "
        "melden Sie die Störung rund um die Uhr bei der Störungsnummer der Feinschliff Netz GmbH, die auf "
        "Ihrer Rechnung steht. Aktuelle Störungen sehen Sie auch auf der Störungskarte im Kundenportal.",
        helpfulness=0.1,
    ),
    gen(
        "L13",
        15,
        "09:21:37",
        "u-6b2d9c",
        "Ich ziehe innerhalb von Feinschliff um. Was muss ich tun?",
        "Gerne helfe ich Ihnen: Teilen Sie uns Ihren Umzug am besten zwei Wochen vorher im Kundenportal unter "
        "„Umzug melden“ mit, zusammen mit der neuen Adresse und den Zählerständen am Aus- und Einzugstag. "
        "Ihr Vertrag läuft dann einfach an der neuen Adresse weiter.",
        helpfulness=0.85,
    ),
    gen(
        "L14",
        15,
        "12:02:50",
        "u-2c9e40",
        "Zu welchem Datum wird mein Abschlag abgebucht?",
        "Gerne helfe ich Ihnen: Ihr Abschlag ist jeweils zum 15. eines Monats fällig und wird ein bis zwei "
        "Bankarbeitstage später per Lastschrift eingezogen. Den Fälligkeitsplan sehen Sie im Kundenportal "
        "unter „Abschläge“.",
        thumbs=UP,
        helpfulness=0.9,
    ),
    gen(
        "L15",
        15,
        "16:38:22",
        "u-a19e3c",
        "Da steht ein Zählerstand, der viel zu hoch ist.",
        "Gerne helfe ich Ihnen: Wenn der Zählerstand auf Ihrer Rechnung nicht stimmt, melden Sie uns bitte den "
        "aktuellen Stand mit einem Foto des Zählers im Kundenportal unter „Zählerstand melden“. Wir prüfen "
        "die Angabe und korrigieren die Rechnung, falls nötig.",
        history=[
            ("user", "Ich habe eine Frage zu meiner Rechnung."),
            ("assistant", "Gerne helfe ich Ihnen: Worum geht es bei Ihrer Rechnung genau?"),
        ],
        thumbs=UP,
        helpfulness=0.87,
    ),
    gen(
        "L16",
        16,
        "08:19:03",
        "u-d7c4e1",
        "Wie stelle ich auf Lastschrift um?",
        "Please send us your IBAN by email.",
        thumbs=DOWN,
        comment="Englisch und unsicher",
        correction="Gerne helfe ich Ihnen: Erteilen Sie uns einfach im Kundenportal unter „Zahlungsweise“ ein "
        "SEPA-Lastschriftmandat, dann ziehen wir Ihre Abschläge ab dem nächsten Fälligkeitstermin ein. Bitte "
        "schicken Sie uns Ihre Bankdaten nicht per E-Mail.",
        helpfulness=0.05,
    ),
    gen(
        "L17",
        16,
        "10:45:57",
        "u-5be812",
        "Ich habe meine Jahresabrechnung noch nicht bekommen. Wann kommt sie?",
        "Gerne helfe ich Ihnen: Die Jahresabrechnung erstellen wir innerhalb von sechs Wochen nach Ende des "
        "Abrechnungszeitraums; sobald sie fertig ist, finden Sie sie auch im Kundenportal unter "
        "„Rechnungen“. Falls sie danach noch fehlt, melden Sie sich bitte über das Kontaktformular.",
        thumbs=UP,
        helpfulness=0.83,
    ),
    gen(
        "L18",
        16,
        "13:11:34",
        "u-91d0b7",
        "Gibt es einen speziellen Tarif für Wärmepumpen?",
        "Gibt es.",
        thumbs=DOWN,
        helpfulness=0.25,
        tone="unfreundlich",
    ),
    gen(
        "L19",
        16,
        "17:26:48",
        "u-0e66d2",
        "Muss ich mein Balkonkraftwerk bei Ihnen anmelden?",
        "Gerne helfe ich Ihnen: Bei uns als Lieferant müssen Sie Ihr Balkonkraftwerk nicht anmelden; tragen Sie "
        "es lediglich im Marktstammdatenregister der Bundesnetzagentur ein. Einen eventuell nötigen "
        "Zählertausch übernimmt der Netzbetreiber.",
    ),
    gen(
        "L20",
        17,
        "09:33:15",
        "u-7f3a21",
        "Habt ihr einen Tarif für das Laden von E-Autos zu Hause?",
        "Gerne helfe ich Ihnen: Ja, mit „Feinschliff Mobil“ laden Sie Ihr E-Auto zu Hause zu einem günstigeren "
        "Arbeitspreis, wenn die Wallbox über einen eigenen Zähler läuft. Den Tarif können Sie im "
        "Kundenportal unter „Tarif wechseln“ beantragen.",
        thumbs=UP,
        helpfulness=0.89,
    ),
    gen(
        "L21",
        17,
        "11:58:29",
        "u-c40a3f",
        "Ihr habt die Preise erhöht. Kann ich jetzt sofort kündigen?",
        "Eine Kündigung wegen einer Preiserhöhung ist nicht möglich.",
        thumbs=DOWN,
        comment="Das ist falsch!",
        correction="Gerne helfe ich Ihnen: Ja, bei einer Preiserhöhung haben Sie ein Sonderkündigungsrecht und "
        "können zum Zeitpunkt der Preisänderung kündigen, ohne die reguläre Frist einzuhalten. Schicken Sie "
        "uns die Kündigung einfach in Textform, zum Beispiel über das Kontaktformular.",
        helpfulness=0.1,
        tone="neutral",
    ),
    gen(
        "L22",
        17,
        "15:04:11",
        "u-6b2d9c",
        "Am 15. November.",
        "Gerne helfe ich Ihnen: Dann melden Sie Ihren Umzug bitte bis zum 1. November im Kundenportal unter "
        "„Umzug melden“ und geben Sie am Umzugstag die Zählerstände der alten und der neuen Wohnung an. Ihr "
        "Vertrag läuft anschließend ohne Unterbrechung an der neuen Adresse weiter.",
        history=[
            ("user", "Ich ziehe innerhalb von Feinschliff um und möchte meinen Vertrag mitnehmen."),
            (
                "assistant",
                "Gerne helfe ich Ihnen: Das ist problemlos möglich. Wann ist Ihr Umzugstermin?",
            ),
        ],
        thumbs=UP,
        helpfulness=0.86,
    ),
    gen(
        "L23",
        18,
        "08:40:52",
        "u-f2e871",
        "Wie bekomme ich mein Guthaben aus der Jahresabrechnung zurück?",
        "Gerne helfe ich Ihnen: Ihr Guthaben überweisen wir automatisch innerhalb von zwei Wochen nach der "
        "Jahresabrechnung auf Ihr hinterlegtes Konto. Fehlt uns Ihre Bankverbindung, tragen Sie sie bitte im "
        "Kundenportal unter „Zahlungsweise“ ein.",
        thumbs=UP,
        helpfulness=0.91,
    ),
    gen(
        "L24",
        18,
        "10:17:06",
        "u-a19e3c",
        "Wo finde ich meine Zählernummer?",
        "Die Zählernummer steht auf Ihrer Kundenkarte.",
        thumbs=DOWN,
        helpfulness=0.3,
    ),
    gen(
        "L25",
        18,
        "14:49:33",
        "u-d7c4e1",
        "Kann ich eine Nachzahlung in Raten begleichen?",
        "Gerne helfe ich Ihnen: Ja, eine Nachzahlung können Sie in bis zu sechs Monatsraten zahlen; schreiben "
        "Sie uns dazu über das Kontaktformular im Kundenportal. Passen Sie am besten gleichzeitig Ihren "
        "Abschlag an, damit keine neue Nachzahlung entsteht.",
        thumbs=UP,
        thumbs_on="trace",
        helpfulness=0.84,
    ),
    gen(
        "L26",
        19,
        "09:14:27",
        "u-8d1b02",
        "Ich habe mein Passwort für das Kundenportal vergessen.",
        "Gerne helfe ich Ihnen: Klicken Sie auf der Anmeldeseite auf „Passwort vergessen?“ und geben Sie Ihre "
        "E-Mail-Adresse ein. Sie erhalten dann einen Link, mit dem Sie ein neues Passwort festlegen können.",
        thumbs=UP,
        thumbs_on="trace",
    ),
    gen(
        "L27",
        19,
        "12:36:40",
        "u-44f9a8",
        "Kann der Zählerableser auch am Samstag kommen?",
        "Nein.",
        thumbs=DOWN,
        thumbs_on="trace",
        correction="Gerne helfe ich Ihnen: Samstagstermine bieten wir leider nicht an, Sie müssen aber nicht "
        "zu Hause sein: Lesen Sie den Zählerstand einfach selbst ab und melden Sie ihn bis zum Ende der "
        "Ablesefrist im Kundenportal oder per Ablesekarte.",
    ),
    gen(
        "L28",
        19,
        "16:05:18",
        "u-3a7c55",
        "Bieten Sie auch Fernwärme an?",
        "Gerne helfe ich Ihnen: Ja, in Teilen von Feinschliff-Mitte und Feinschliff-Nord versorgen wir "
        "Haushalte mit Fernwärme. Ob Ihre Adresse angeschlossen werden kann, prüfen wir gern über das "
        "Anfrageformular auf unserer Website.",
        helpfulness=0.8,
    ),
    gen(
        "L29",
        20,
        "08:27:59",
        "u-2c9e40",
        "Erklären Sie mir bitte alle Bestandteile meines Strompreises.",
        "Gerne helfe ich Ihnen: Ihr Strompreis setzt sich aus mehreren Bestandteilen zusammen. Zunächst gibt "
        "es den Grundpreis, den Sie unabhängig vom Verbrauch jeden Monat zahlen und der unter anderem die "
        "Kosten für Messstellenbetrieb, Abrechnung und Kundenservice abdeckt. Hinzu kommt der Arbeitspreis "
        "pro Kilowattstunde, der die Beschaffung des Stroms, die Netzentgelte für die Nutzung des "
        "Stromnetzes, die Konzessionsabgabe an die Gemeinde, die Stromsteuer sowie verschiedene Umlagen "
        "enthält, zum Beispiel die Offshore-Netzumlage und die Umlage nach dem Kraft-Wärme-Kopplungsgesetz. "
        "Auf alle diese Bestandteile wird zusätzlich die Mehrwertsteuer von 19 Prozent erhoben. Wenn Sie "
        "wissen möchten, wie hoch die einzelnen Anteile in Ihrem Tarif sind, finden Sie eine Aufstellung",
        thumbs=DOWN,
        comment="Antwort bricht mitten im Satz ab",
        helpfulness=0.4,
        level="WARNING",
        status_message="finish_reason=length",
    ),
    gen(
        "L30",
        20,
        "11:09:44",
        "u-5be812",
        "Wie ändere ich meine Bankverbindung?",
        "Gerne helfe ich Ihnen: Ihre neue Bankverbindung hinterlegen Sie im Kundenportal unter "
        "„Zahlungsweise“, indem Sie ein neues SEPA-Lastschriftmandat erteilen. Die Änderung gilt ab dem "
        "nächsten Abschlag.",
        thumbs=UP,
        helpfulness=0.9,
    ),
]

# Argilla records whose metadata points to a (not bundled) Langfuse trace they were sampled from.
for _rec in ARGILLA_RECORDS:
    if _rec["source"] == "langfuse":
        _rec["langfuse_trace_id"] = stable_hex(32, "argilla-origin-trace", _rec["id"])
