"""A synthetic German PII corpus with the planted values and their positions, for recall tests.

Every identifier is valid by its real rules, so a checksum-validating recognizer has to accept it:
- IBAN: ISO 13616 check digits (mod 97) over country-specific BBAN layouts (DE, AT, CH, NL, FR,
  IT, ES, GB), written compact or in groups of four as on paper;
- Steuer-ID: 11 digits, first digit 1-9, in digits 1-10 exactly one digit twice or three times
  (never three in a row), the others at most once (BZSt, since 2016), check digit ISO 7064
  MOD 11,10;
- German phone numbers in the formats people write (+49 30 ..., +49 (0)30 ..., 0049 ...,
  0171 ..., 0171/..., (030) ..., 030-...), with real area codes and mobile prefixes;
- e-mail addresses (dots, digits, plus tags, hyphenated and sub-domains, .de/.com/.org/...);
- IPv4 addresses.

Each item is one German sentence (support-chat style) with one planted value and distractor
numbers that are not PII (amounts, dates, meter readings, postcodes, contract numbers).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

ENTITY_KINDS = ("IBAN_CODE", "DE_TAX_ID", "PHONE_NUMBER", "EMAIL_ADDRESS", "IP_ADDRESS")


@dataclass(frozen=True)
class Item:
    text: str
    entity: str
    value: str
    start: int
    end: int


# --------------------------------------------------------------------------- identifiers

# country -> BBAN layout: n = digit, a = upper-case letter, c = digit or letter
_BBAN = {
    "DE": "nnnnnnnnnnnnnnnnnn",
    "AT": "nnnnnnnnnnnnnnnn",
    "CH": "nnnnn" + "c" * 12,
    "NL": "aaaannnnnnnnnn",
    "FR": "n" * 10 + "c" * 11 + "nn",
    "IT": "a" + "n" * 10 + "c" * 12,
    "ES": "nnnnnnnnnnnnnnnnnnnn",
    "GB": "aaaannnnnnnnnnnnnn",
}
_CHARS = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + "ABCDEFGH"}


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{98 - number % 97:02d}"


def make_iban(rng: random.Random, country: str) -> str:
    bban = "".join(rng.choice(_CHARS[k]) for k in _BBAN[country])
    return country + iban_check_digits(country, bban) + bban


def iban_is_valid(iban: str) -> bool:
    compact = iban.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def tax_id_check_digit(first10: str) -> int:
    """ISO 7064 MOD 11,10 as specified by the Bundeszentralamt für Steuern."""
    product = 10
    for ch in first10:
        total = (int(ch) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return 0 if check == 10 else check


def make_tax_id(rng: random.Random) -> str:
    while True:
        repeated = rng.choice(string.digits)
        times = rng.choice((2, 3))
        others = rng.sample([d for d in string.digits if d != repeated], 10 - times)
        digits = others + [repeated] * times
        rng.shuffle(digits)
        first10 = "".join(digits)
        if first10[0] == "0" or repeated * 3 in first10:
            continue
        return first10 + str(tax_id_check_digit(first10))


def tax_id_is_valid(tax_id: str) -> bool:
    d = tax_id.replace(" ", "").replace("/", "")
    if len(d) != 11 or not d.isdigit() or d[0] == "0":
        return False
    counts = sorted((d[:10].count(x) for x in set(d[:10])), reverse=True)
    ok_rule = counts[0] in (2, 3) and all(c == 1 for c in counts[1:])
    return ok_rule and tax_id_check_digit(d[:10]) == int(d[10])


def format_tax_id(rng: random.Random, tax_id: str) -> str:
    style = rng.choice(("plain", "plain", "spaces", "slashes"))
    if style == "plain":
        return tax_id
    sep = " " if style == "spaces" else "/"
    return sep.join((tax_id[:2], tax_id[2:5], tax_id[5:8], tax_id[8:]))


def format_iban(rng: random.Random, iban: str) -> str:
    style = rng.random()
    if style < 0.45:
        return iban
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return grouped.lower() if style > 0.95 else grouped  # some people type it in lower case


# Area codes (without trunk 0) with the length of subscriber numbers used there.
_AREAS = [("30", 8), ("40", 8), ("89", 7), ("69", 8), ("221", 7), ("711", 7), ("211", 7),
          ("351", 7), ("341", 7), ("511", 7), ("911", 6), ("228", 6), ("6221", 6)]  # fmt: skip
_MOBILE = [("151", 8), ("152", 8), ("157", 8), ("160", 7), ("170", 7), ("171", 7), ("172", 7),
           ("173", 7), ("175", 7), ("176", 8), ("177", 7), ("178", 7), ("179", 7)]  # fmt: skip


def make_phone(rng: random.Random) -> str:
    mobile = rng.random() < 0.5
    area, length = rng.choice(_MOBILE if mobile else _AREAS)
    sub = str(rng.randint(2, 9)) + "".join(rng.choice(string.digits) for _ in range(length - 1))
    styles = [
        f"+49 {area} {sub}",
        f"+49 (0){area} {sub}",
        f"+49{area}{sub}",
        f"0049 {area} {sub}",
        f"0{area} {sub}",
        f"0{area}/{sub}",
        f"0{area}-{sub}",
        f"(0{area}) {sub}",
        f"+49 {area} {sub[:3]} {sub[3:]}",
        f"0{area} {sub[:3]} {sub[3:]}",
        f"0{area} / {sub}",
        f"+49 (0) {area} {sub}",
        f"0{area} - {sub}",
    ]
    return rng.choice(styles)


_FIRST = ["max", "anna", "lukas", "leonie", "juergen", "oezlem", "sabine", "thomas", "maria",
          "kevin", "fatma", "stefan", "julia", "dirk", "hanna", "m", "k"]  # fmt: skip
_LAST = ["mustermann", "schmidt", "mueller", "weiss", "yilmaz", "becker", "hoffmann", "koch",
         "schaefer", "nguyen", "wagner", "klein"]  # fmt: skip
_DOMAINS = ["example.org", "example.de", "web.de", "gmx.net", "t-online.de", "posteo.de",
            "mail.stadtwerke-musterstadt.de", "uni-hamburg.de", "firma.com", "mailbox.org",
            "beispiel-gmbh.de", "outlook.com"]  # fmt: skip


def make_email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice(
        [
            f"{first}.{last}",
            f"{first}{last}",
            f"{first}_{last}{rng.randint(1, 99)}",
            f"{first[0]}.{last}",
            f"{first}.{last}+strom",
            f"{last}-{first}",
            f"info{rng.randint(1, 9)}",
        ]
    )
    return f"{local}@{rng.choice(_DOMAINS)}"


def make_ip(rng: random.Random) -> str:
    first = rng.choice([11, 23, 46, 62, 77, 80, 84, 91, 95, 109, 141, 176, 185, 192, 212, 217])
    return ".".join(str(x) for x in (first, rng.randint(0, 255), rng.randint(0, 255),
                                     rng.randint(1, 254)))  # fmt: skip


# --------------------------------------------------------------------------- sentences

_TEMPLATES = {
    "IBAN_CODE": [
        "Bitte buchen Sie den Abschlag ab sofort von meinem Konto {v} ab.",
        "Meine neue Bankverbindung lautet {v}, bitte ändern Sie das für Vertrag {contract}.",
        "Die Erstattung von {amount} Euro bitte auf IBAN {v} überweisen.",
        "Ich habe das SEPA-Mandat für {v} widerrufen, wie geht es jetzt weiter?",
        "Kontoinhaberin ist meine Mutter, das Konto: {v}. Zählerstand {reading} kWh.",
        "{v} ist das richtige Konto, nicht das alte aus dem Schreiben vom {date}.",
    ],
    "DE_TAX_ID": [
        "Meine Steuer-ID ist {v}, brauchen Sie die für die Rechnung?",
        "Für den Zuschuss wurde die Steueridentifikationsnummer {v} angegeben.",
        "Hier meine steuerliche Identifikationsnummer: {v} (laut Bescheid vom {date}).",
        "IdNr. {v}, Vertrag {contract}, bitte um Rückruf.",
        "Sie hatten nach meiner Steuer-IdNr gefragt: {v}.",
        "Die Identifikationsnummer {v} steht auf meiner Lohnsteuerbescheinigung.",
    ],
    "PHONE_NUMBER": [
        "Rufen Sie mich bitte unter {v} zurück, am besten nach 17 Uhr.",
        "Meine Telefonnummer hat sich geändert, neu: {v}.",
        "Sie erreichen mich mobil unter {v}, Kundennummer {contract}.",
        "Tel. {v} – ich bin ab dem {date} wieder erreichbar.",
        "Unter {v} ist tagsüber jemand da, der den Zähler ({reading} kWh) ablesen kann.",
        "Bitte keine Anrufe mehr auf {v}, nur noch per Post an {plz} Musterstadt.",
    ],
    "EMAIL_ADDRESS": [
        "Schicken Sie die Rechnung bitte an {v}.",
        "Meine E-Mail-Adresse ist jetzt {v}, die alte gibt es nicht mehr.",
        "Die Bestätigung kam nie an, ich habe {v} angegeben.",
        "Bitte alle Schreiben zu Vertrag {contract} per Mail an {v} senden.",
        "Kontakt: {v}; Abschlag derzeit {amount} Euro.",
        "Ich bekomme keine Mails an {v}, steht da ein Tippfehler drin?",
        "Absender: Kundin <{v}>, Betreff: Abschlag {amount} Euro",
        "E-Mail:{v}",
    ],
    "IP_ADDRESS": [
        "Das Kundenportal sperrt mich, meine IP ist {v}.",
        "Laut Router kam die Anmeldung von {v} am {date}.",
        "Fehlermeldung beim Login von {v}: Zugriff verweigert.",
        "Die App verbindet sich nicht, Adresse {v}, Version 3.2.1.",
    ],
}

_MAKERS = {
    "IBAN_CODE": lambda rng: format_iban(
        rng, make_iban(rng, rng.choice(["DE"] * 6 + ["AT", "CH", "NL", "FR", "IT", "ES", "GB"]))
    ),
    "DE_TAX_ID": lambda rng: format_tax_id(rng, make_tax_id(rng)),
    "PHONE_NUMBER": make_phone,
    "EMAIL_ADDRESS": make_email,
    "IP_ADDRESS": make_ip,
}


def _distractors(rng: random.Random) -> dict[str, str]:
    return {
        "contract": f"{rng.randint(100000, 999999)}",
        "amount": f"{rng.randint(20, 250)},{rng.randint(0, 99):02d}",
        "reading": f"{rng.randint(1000, 99999)}",
        "date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(20, 27)}",
        "plz": f"{rng.randint(10000, 99999)}",
    }


def make_item(rng: random.Random, entity: str) -> Item:
    value = _MAKERS[entity](rng)
    template = rng.choice(_TEMPLATES[entity])
    fill = _distractors(rng)
    head, tail = template.split("{v}")
    head, tail = head.format(**fill), tail.format(**fill)
    text = head + value + tail
    return Item(text=text, entity=entity, value=value, start=len(head), end=len(head) + len(value))


def make_corpus(n_per_entity: int, seed: int = 0) -> list[Item]:
    """``n_per_entity`` items for each entity kind, interleaved, deterministic for a seed."""
    rng = random.Random(seed)
    return [make_item(rng, e) for _ in range(n_per_entity) for e in ENTITY_KINDS]


# --------------------------------------------------------------------------- look-alike forms

# How the same values arrive from web forms, Word, PDFs, chat apps and logs: non-breaking or
# thin spaces between groups, zero-width and soft hyphens inside, full-width digits, dashes,
# line breaks between IBAN groups, an '@' encoded (JSON, URL, HTML) or written "(at)".
_SPACE_LIKE = ["\u00a0", "\u202f", "\u2009"]
_DIGITS_FULL = str.maketrans("0123456789.", "０１２３４５６７８９．")


def _inside(rng: random.Random, value: str, char: str) -> str:
    i = rng.randrange(1, len(value))
    return value[:i] + char + value[i:]


def disguise(rng: random.Random, entity: str, value: str) -> str:
    """``value`` in one of the look-alike forms above (the same identifier for a reader)."""
    forms = [
        lambda v: v.replace(" ", rng.choice(_SPACE_LIKE)),
        lambda v: _inside(rng, v, rng.choice(["\u200b", "\u00ad", "\u2060"])),
        lambda v: v.translate(_DIGITS_FULL),
    ]
    if entity == "IBAN_CODE":
        grouped = " ".join(value.replace(" ", "")[i : i + 4] for i in range(0, 40, 4)).strip()
        forms += [
            lambda v: grouped.replace(" ", "\n", 2),
            lambda v: grouped.replace(" ", "  "),
            lambda v: grouped.replace(" ", "."),
            lambda v: grouped[:1] + grouped[1:].lower(),
        ]
    elif entity in ("PHONE_NUMBER", "DE_TAX_ID"):
        forms += [lambda v: v.replace("-", "\u2013").replace("/", "\u2013").replace(" ", "\u2013")]
    elif entity == "EMAIL_ADDRESS":
        at = ["(at)", " [at] ", "%40", "&#64;", "\\u0040", "\uff20", " (at) "]
        forms += [lambda v: v.replace("@", rng.choice(at))] * 3
        forms += [lambda v: v.replace("@", " [at] ").replace(".", " [dot] ")]
    return rng.choice(forms)(value)


def make_lookalike_corpus(n_per_entity: int, seed: int = 0) -> list[Item]:
    """Like ``make_corpus``, each planted value in a look-alike form (``disguise``); in some
    items the whole sentence has full-width digits (distractors too)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n_per_entity):
        for entity in ENTITY_KINDS:
            item = make_item(rng, entity)
            value = disguise(rng, entity, item.value)
            text = item.text[: item.start] + value + item.text[item.end :]
            if rng.random() < 0.2 and not any(c in value for c in "%&\\"):  # not in an escape
                text, value = text.translate(_DIGITS_FULL), value.translate(_DIGITS_FULL)
            items.append(Item(text, entity, value, item.start, item.start + len(value)))
    return items
