from __future__ import annotations

from runner.demo.grammar import OBJECTS, NOUNS, Grammar, NounPhrase


def _np(noun: str, adjective: tuple[str, str] | None, definite: bool, plural: bool = False) -> NounPhrase:
    entry = next(n for n in NOUNS + OBJECTS if n[0] == noun)
    return NounPhrase(entry, adjective, definite, plural)


def test_german_declension_follows_gender_case_and_article() -> None:
    small = ("small", "klein")
    assert _np("dog", small, True).german("nom") == "der kleine Hund"
    assert _np("dog", small, True).german("acc") == "den kleinen Hund"
    assert _np("dog", small, False).german("nom") == "ein kleiner Hund"
    assert _np("dog", small, False).german("acc") == "einen kleinen Hund"
    assert _np("car", small, False).german("acc") == "ein kleines Auto"
    assert _np("cat", small, False).german("acc") == "eine kleine Katze"
    assert _np("book", small, False, plural=True).german("acc") == "kleine Bücher"
    assert _np("book", small, True, plural=True).german("dat") == "den kleinen Büchern"
    assert _np("car", ("expensive", "teuer"), True).german("nom") == "das teure Auto"
    assert _np("apple", ("old", "alt"), False).english() == "an old apple"


def test_word_order_per_frame() -> None:
    grammar = Grammar(3)
    pairs = [grammar.pair() for _ in range(400)]
    subordinate = [de for _, de in pairs if ", dass " in de or ", weil " in de]
    perfect = [(en, de) for en, de in pairs if " has " in en or " have " in en]
    assert subordinate and all(de.split()[-1].rstrip(".") in {v for v in _finite_verbs()} for de in subordinate)
    assert perfect and all(de.rstrip(".").split()[-1].startswith(("ge", "ver", "be", "re")) for _, de in perfect)
    assert all(en[0].isupper() and de[0].isupper() and en.endswith(".") and de.endswith(".") for en, de in pairs)


def _finite_verbs() -> set[str]:
    from runner.demo.grammar import VERBS

    return {v[4] for v in VERBS} | {v[5] for v in VERBS}


def test_unique_pairs_respect_exclusions() -> None:
    first = Grammar(1).unique_pairs(50)
    second = Grammar(1).unique_pairs(50, exclude={en for en, _ in first})
    assert not {en for en, _ in first} & {en for en, _ in second}
    assert Grammar(1).unique_pairs(50) == first
