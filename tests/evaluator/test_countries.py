"""Country metadata: lookups, the non-ISO table, the dated income groups, coverage of the data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cvs_evaluator.countries import (
    INCOME_CLASSIFICATION,
    INCOME_GROUPS,
    NON_ISO_CODES,
    STUDY_COUNTRIES,
    UnknownCountry,
    all_countries,
    country,
    country_by_name,
    income_groups,
    missing_study_countries,
)


def test_lookup_by_iso3_iso2_any_case() -> None:
    assert country("DEU").name == "Germany"
    assert country("de").iso3 == "DEU"
    assert country(" usa ").iso2 == "US"


def test_northern_ireland_comes_from_the_non_iso_table() -> None:
    nir = country("NIR")
    assert nir is NON_ISO_CODES["NIR"]
    assert (nir.iso2, nir.name, nir.income_group) == ("GB-NIR", "Northern Ireland", None)
    assert country("gb-nir") is nir


def test_codebook_spelling_of_morocco_reads_as_iso() -> None:
    assert country("MOR").iso3 == "MAR"


def test_unknown_code_lists_close_matches() -> None:
    with pytest.raises(UnknownCountry, match=r"unknown country code 'USX'; did you mean .*'USA'"):
        country("USX")
    with pytest.raises(UnknownCountry, match=r"not in countries\.csv"):
        country("QQQ")


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UnknownCountry, match=r"did you mean 'Germany'"):
        country_by_name("Germny")


def test_codes_are_unique() -> None:
    entries = all_countries()
    assert len({c.iso3 for c in entries}) == len(entries)
    assert len({c.iso2 for c in entries}) == len(entries)


def test_income_groups_are_the_dated_classification() -> None:
    assert "FY2025" in INCOME_CLASSIFICATION and "July 2024" in INCOME_CLASSIFICATION
    groups = income_groups()
    assert set(groups.values()) <= {*INCOME_GROUPS, None}
    assert sorted(code for code, group in groups.items() if group is None) == [
        "NIR",  # not a country of its own
        "TWN",  # no World Bank classification (per the issue)
        "VEN",  # unclassified by the World Bank since July 2021
    ]


@pytest.mark.parametrize(
    "code,group",
    [
        # Changes in the FY2025 classification (1 July 2024)…
        ("RUS", "High income"),
        ("BGR", "High income"),
        ("IRN", "Upper middle income"),
        ("UKR", "Upper middle income"),
        ("MNG", "Upper middle income"),
        # …a change of FY2024 (Jordan moved down in July 2023)…
        ("JOR", "Lower middle income"),
        # …and the study's countries.
        ("USA", "High income"),
        ("FRA", "High income"),
        ("KOR", "High income"),
        ("ITA", "High income"),
        ("BRA", "Upper middle income"),
        ("MEX", "Upper middle income"),
        ("CHN", "Upper middle income"),
        ("PAK", "Lower middle income"),
        ("NGA", "Lower middle income"),
        ("VNM", "Lower middle income"),
        ("ETH", "Low income"),
    ],
)
def test_income_group_spot_checks(code: str, group: str) -> None:
    assert country(code).income_group == group


def test_study_countries() -> None:
    assert STUDY_COUNTRIES == ("USA", "FRA", "KOR", "ITA", "BRA", "MEX", "CHN", "PAK", "NGA", "VNM")
    assert [country(c).iso3 for c in STUDY_COUNTRIES] == list(STUDY_COUNTRIES)
    assert missing_study_countries(["USA", "KOR", "BRA", "MEX", "CHN", "PAK", "NGA", "VNM"]) == [
        "FRA",
        "ITA",
    ]


def test_every_country_in_the_data_is_in_the_table() -> None:
    from cvs_evaluator.wvs import study_files

    found = set()
    for path in study_files():  # $CVS_DATA; fails when missing
        sep = ";" if "semicolon" in path.name else ","
        codes = pd.read_csv(path, sep=sep, usecols=["B_COUNTRY_ALPHA"], encoding="utf-8-sig")
        found |= set(codes["B_COUNTRY_ALPHA"].dropna())
    assert len(found) == 60
    for code in found:
        assert country(code).iso3 == code


def test_every_codebook_country_name_resolves() -> None:
    from cvs_families.paths import data_dir

    codebook = json.loads(
        (data_dir() / "wvs7" / "questionnaire" / "codebook.json").read_text(encoding="utf-8")
    )
    for code, name in codebook["B_COUNTRY_ALPHA"]["choices"].items():
        assert country(code) is country_by_name(name), (code, name)
    for name in codebook["B_COUNTRY"]["choices"].values():
        country_by_name(name)


def test_iso2_codes_match_the_flag_files() -> None:
    from cvs_families.paths import data_dir

    flags = data_dir() / "images" / "flags"
    names = json.loads((flags / "countries.json").read_text(encoding="utf-8"))
    for entry in all_countries():
        assert (flags / f"{entry.iso2.lower()}.png").is_file(), entry.iso3
        assert entry.iso2 in names, entry.iso3
