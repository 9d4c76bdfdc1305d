"""A self-written English-German template grammar for the embedded demo corpus.

Every sentence is generated together with its translation, so references are exact.
German agreement is real: article and adjective endings follow gender, number and
case (weak declension after the definite article, mixed after the indefinite one,
strong in the bare plural), dative plurals take -n, and word order follows the
clause type (verb-second main clauses, inversion after a fronted adverb, verb-final
infinitives and participles, verb-final subordinate clauses).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (english singular, english plural, german singular, german plural, gender m/f/n)
NOUNS: list[tuple[str, str, str, str, str]] = [
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
    ("bird", "birds", "Vogel", "Vögel", "m"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("doctor", "doctors", "Arzt", "Ärzte", "m"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("man", "men", "Mann", "Männer", "m"),
    ("student", "students", "Student", "Studenten", "m"),
    ("farmer", "farmers", "Bauer", "Bauern", "m"),
    ("baker", "bakers", "Bäcker", "Bäcker", "m"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("boy", "boys", "Junge", "Jungen", "m"),
    ("friend", "friends", "Freund", "Freunde", "m"),
    ("neighbour", "neighbours", "Nachbar", "Nachbarn", "m"),
    ("cook", "cooks", "Koch", "Köche", "m"),
    ("singer", "singers", "Sänger", "Sänger", "m"),
    ("mother", "mothers", "Mutter", "Mütter", "f"),
    ("father", "fathers", "Vater", "Väter", "m"),
    ("sister", "sisters", "Schwester", "Schwestern", "f"),
    ("brother", "brothers", "Bruder", "Brüder", "m"),
    ("mouse", "mice", "Maus", "Mäuse", "f"),
    ("cow", "cows", "Kuh", "Kühe", "f"),
    ("pilot", "pilots", "Pilot", "Piloten", "m"),
]

OBJECTS: list[tuple[str, str, str, str, str]] = [
    ("car", "cars", "Auto", "Autos", "n"),
    ("book", "books", "Buch", "Bücher", "n"),
    ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("letter", "letters", "Brief", "Briefe", "m"),
    ("table", "tables", "Tisch", "Tische", "m"),
    ("chair", "chairs", "Stuhl", "Stühle", "m"),
    ("house", "houses", "Haus", "Häuser", "n"),
    ("flower", "flowers", "Blume", "Blumen", "f"),
    ("bottle", "bottles", "Flasche", "Flaschen", "f"),
    ("cup", "cups", "Tasse", "Tassen", "f"),
    ("lamp", "lamps", "Lampe", "Lampen", "f"),
    ("key", "keys", "Schlüssel", "Schlüssel", "m"),
    ("picture", "pictures", "Bild", "Bilder", "n"),
    ("bicycle", "bicycles", "Fahrrad", "Fahrräder", "n"),
    ("ball", "balls", "Ball", "Bälle", "m"),
    ("window", "windows", "Fenster", "Fenster", "n"),
    ("door", "doors", "Tür", "Türen", "f"),
    ("hat", "hats", "Hut", "Hüte", "m"),
    ("shoe", "shoes", "Schuh", "Schuhe", "m"),
    ("bag", "bags", "Tasche", "Taschen", "f"),
    ("cake", "cakes", "Kuchen", "Kuchen", "m"),
    ("bread", "breads", "Brot", "Brote", "n"),
    ("song", "songs", "Lied", "Lieder", "n"),
    ("map", "maps", "Karte", "Karten", "f"),
    ("clock", "clocks", "Uhr", "Uhren", "f"),
    ("boat", "boats", "Boot", "Boote", "n"),
    ("garden", "gardens", "Garten", "Gärten", "m"),
    ("newspaper", "newspapers", "Zeitung", "Zeitungen", "f"),
]

# (english, german stem): German endings are added by declension.
ADJECTIVES: list[tuple[str, str]] = [
    ("small", "klein"), ("big", "groß"), ("old", "alt"), ("young", "jung"),
    ("new", "neu"), ("red", "rot"), ("blue", "blau"), ("green", "grün"),
    ("black", "schwarz"), ("white", "weiß"), ("beautiful", "schön"), ("happy", "glücklich"),
    ("tired", "müde"), ("quiet", "leise"), ("loud", "laut"), ("clever", "klug"),
    ("friendly", "freundlich"), ("strange", "seltsam"), ("heavy", "schwer"), ("cheap", "billig"),
    ("expensive", "teuer"), ("yellow", "gelb"), ("brown", "braun"), ("funny", "lustig"),
]

# (en 3sg, en plural, en past participle, en infinitive,
#  de 3sg, de 3pl, de infinitive, de participle)
VERBS: list[tuple[str, str, str, str, str, str, str, str]] = [
    ("sees", "see", "seen", "see", "sieht", "sehen", "sehen", "gesehen"),
    ("finds", "find", "found", "find", "findet", "finden", "finden", "gefunden"),
    ("buys", "buy", "bought", "buy", "kauft", "kaufen", "kaufen", "gekauft"),
    ("needs", "need", "needed", "need", "braucht", "brauchen", "brauchen", "gebraucht"),
    ("likes", "like", "liked", "like", "mag", "mögen", "mögen", "gemocht"),
    ("opens", "open", "opened", "open", "öffnet", "öffnen", "öffnen", "geöffnet"),
    ("carries", "carry", "carried", "carry", "trägt", "tragen", "tragen", "getragen"),
    ("paints", "paint", "painted", "paint", "malt", "malen", "malen", "gemalt"),
    ("sells", "sell", "sold", "sell", "verkauft", "verkaufen", "verkaufen", "verkauft"),
    ("washes", "wash", "washed", "wash", "wäscht", "waschen", "waschen", "gewaschen"),
    ("holds", "hold", "held", "hold", "hält", "halten", "halten", "gehalten"),
    ("brings", "bring", "brought", "bring", "bringt", "bringen", "bringen", "gebracht"),
    ("searches for", "search for", "searched for", "search for", "sucht", "suchen", "suchen", "gesucht"),
    ("loses", "lose", "lost", "lose", "verliert", "verlieren", "verlieren", "verloren"),
    ("builds", "build", "built", "build", "baut", "bauen", "bauen", "gebaut"),
    ("visits", "visit", "visited", "visit", "besucht", "besuchen", "besuchen", "besucht"),
    ("cleans", "clean", "cleaned", "clean", "putzt", "putzen", "putzen", "geputzt"),
    ("repairs", "repair", "repaired", "repair", "repariert", "reparieren", "reparieren", "repariert"),
]

# (english phrase, german preposition, german noun, gender): dative places.
PLACES: list[tuple[str, str, str, str]] = [
    ("in the kitchen", "in", "Küche", "f"),
    ("in the park", "in", "Park", "m"),
    ("in the city", "in", "Stadt", "f"),
    ("in the school", "in", "Schule", "f"),
    ("in the village", "in", "Dorf", "n"),
    ("in the forest", "in", "Wald", "m"),
    ("in the office", "in", "Büro", "n"),
    ("at the station", "an", "Bahnhof", "m"),
    ("at the lake", "an", "See", "m"),
    ("at the window", "an", "Fenster", "n"),
    ("near the church", "neben", "Kirche", "f"),
    ("near the bridge", "neben", "Brücke", "f"),
    ("behind the house", "hinter", "Haus", "n"),
    ("behind the wall", "hinter", "Mauer", "f"),
    ("on the bridge", "auf", "Brücke", "f"),
    ("on the street", "auf", "Straße", "f"),
    ("in the museum", "in", "Museum", "n"),
    ("at the market", "auf", "Markt", "m"),
]

TIMES: list[tuple[str, str]] = [
    ("today", "heute"), ("tomorrow", "morgen"), ("yesterday", "gestern"),
    ("now", "jetzt"), ("often", "oft"), ("sometimes", "manchmal"),
    ("in the morning", "am Morgen"), ("in the evening", "am Abend"), ("later", "später"),
]

# (english modal, de 3sg, de 3pl)
MODALS: list[tuple[str, str, str]] = [
    ("can", "kann", "können"), ("must", "muss", "müssen"), ("wants to", "will", "wollen"),
    ("should", "soll", "sollen"),
]

# (english matrix clause, german matrix clause, german conjunction)
MATRIX: list[tuple[str, str, str]] = [
    ("I think that", "Ich glaube", "dass"),
    ("we know that", "Wir wissen", "dass"),
    ("she says that", "Sie sagt", "dass"),
    ("he hopes that", "Er hofft", "dass"),
    ("they are happy because", "Sie sind glücklich", "weil"),
    ("it is good that", "Es ist gut", "dass"),
]

DEF_ARTICLE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
INDEF_ARTICLE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
WEAK_ENDING = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
MIXED_ENDING = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
STRONG_PLURAL_ENDING = {"nom": "e", "acc": "e", "dat": "en"}
CONTRACTIONS = {("in", "dem"): "im", ("an", "dem"): "am"}


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase chosen once and rendered in both languages and any case."""

    noun: tuple[str, str, str, str, str]
    adjective: tuple[str, str] | None
    definite: bool
    plural: bool

    def english(self) -> str:
        en_sg, en_pl, *_ = self.noun
        words = [en_pl if self.plural else en_sg]
        if self.adjective:
            words.insert(0, self.adjective[0])
        if self.definite:
            return " ".join(["the", *words])
        if self.plural:
            return " ".join(words)
        return " ".join(["an" if words[0][0] in "aeio" else "a", *words])

    def german(self, case: str) -> str:
        _, _, de_sg, de_pl, gender = self.noun
        key = "pl" if self.plural else gender
        noun = de_pl if self.plural else de_sg
        if self.plural and case == "dat" and not noun.endswith(("n", "s")):
            noun += "n"
        words: list[str] = []
        if self.definite:
            words.append(DEF_ARTICLE[case][key])
            ending = WEAK_ENDING[case][key]
        elif self.plural:
            ending = STRONG_PLURAL_ENDING[case]
        else:
            words.append(INDEF_ARTICLE[case][key])
            ending = MIXED_ENDING[case][key]
        if self.adjective:
            words.append(_decline(self.adjective[1], ending))
        words.append(noun)
        return " ".join(words)


def _decline(stem: str, ending: str) -> str:
    # "müde"/"leise" end in -e already; "teuer" drops its e before an ending.
    if stem.endswith("e"):
        return stem + ending[1:] if ending.startswith("e") else stem + ending
    if stem == "teuer":
        return "teur" + ending
    return stem + ending


def _place_german(place: tuple[str, str, str, str]) -> str:
    _, prep, noun, gender = place
    article = DEF_ARTICLE["dat"][gender]
    contracted = CONTRACTIONS.get((prep, article))
    return f"{contracted} {noun}" if contracted else f"{prep} {article} {noun}"


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


class Grammar:
    """Draws aligned (English, German) sentence pairs from a seeded generator."""

    frames = ("svo", "place", "inverted", "modal", "perfect", "subordinate")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _noun_phrase(self, nouns: list[tuple[str, str, str, str, str]]) -> NounPhrase:
        rng = self.rng
        return NounPhrase(
            noun=rng.choice(nouns),
            adjective=rng.choice(ADJECTIVES) if rng.random() < 0.7 else None,
            definite=rng.random() < 0.6,
            plural=rng.random() < 0.3,
        )

    def pair(self) -> tuple[str, str]:
        rng = self.rng
        frame = rng.choice(self.frames)
        subject = self._noun_phrase(NOUNS)
        obj = self._noun_phrase(OBJECTS)
        verb = rng.choice(VERBS)
        en_3sg, en_pl, en_part, en_inf, de_3sg, de_3pl, de_inf, de_part = verb
        en_verb = en_pl if subject.plural else en_3sg
        de_verb = de_3pl if subject.plural else de_3sg
        s_en, s_de = subject.english(), subject.german("nom")
        o_en, o_de = obj.english(), obj.german("acc")
        if frame == "svo":
            en, de = f"{s_en} {en_verb} {o_en}", f"{s_de} {de_verb} {o_de}"
        elif frame == "place":
            place = rng.choice(PLACES)
            en = f"{s_en} {en_verb} {o_en} {place[0]}"
            de = f"{s_de} {de_verb} {o_de} {_place_german(place)}"
        elif frame == "inverted":
            time_en, time_de = rng.choice(TIMES)
            en = f"{time_en} {s_en} {en_verb} {o_en}"
            de = f"{time_de} {de_verb} {s_de} {o_de}"
        elif frame == "modal":
            modal_en, modal_3sg, modal_3pl = rng.choice(MODALS)
            en = f"{s_en} {modal_en} {en_inf} {o_en}"
            de = f"{s_de} {modal_3pl if subject.plural else modal_3sg} {o_de} {de_inf}"
        elif frame == "perfect":
            aux_en = "have" if subject.plural else "has"
            aux_de = "haben" if subject.plural else "hat"
            en = f"{s_en} {aux_en} {en_part} {o_en}"
            de = f"{s_de} {aux_de} {o_de} {de_part}"
        else:
            matrix_en, matrix_de, conjunction = rng.choice(MATRIX)
            en = f"{matrix_en} {s_en} {en_verb} {o_en}"
            de = f"{matrix_de}, {conjunction} {s_de} {o_de} {de_verb}"
        return _capitalize(en) + ".", _capitalize(de) + "."

    def unique_pairs(self, count: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
        """`count` pairs whose English side is new and not in `exclude` (keeps splits disjoint)."""
        seen = set(exclude)
        pairs: list[tuple[str, str]] = []
        while len(pairs) < count:
            en, de = self.pair()
            if en not in seen:
                seen.add(en)
                pairs.append((en, de))
        return pairs
