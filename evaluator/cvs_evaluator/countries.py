"""Country metadata: codes, names, World Bank income groups and regions, kept in the project.

The survey files name countries by ISO 3166-1 alpha-3 code, with one exception the WVS makes:
Northern Ireland (`NIR`), surveyed apart from Great Britain and without an ISO country code.
Codes outside ISO come only from the explicit `NON_ISO_CODES` table below; everything else
comes from `countries.csv` (package data: ISO2, ISO3, English name, income group, region, other
spellings). Income groups are one dated World Bank classification (`INCOME_CLASSIFICATION`) so
results don't shift when the Bank reclassifies; a country without one (Taiwan, Northern Ireland,
Venezuela) has `income_group` None and income splits leave it out.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Final

INCOME_CLASSIFICATION: Final = "World Bank FY2025 (July 2024)"
"""The classification the income groups come from: fiscal year 2025, published 1 July 2024,
based on 2023 GNI per capita (Atlas method)."""

INCOME_GROUPS: Final = ("Low income", "Lower middle income", "Upper middle income", "High income")
"""The World Bank's income groups, poorest first."""

REGION_SCHEME: Final = "World Bank regions (the seven WDI analytical regions)"
"""What `Country.region` names."""

STUDY_COUNTRIES: Final = ("USA", "FRA", "KOR", "ITA", "BRA", "MEX", "CHN", "PAK", "NGA", "VNM")
"""ISO3 of the study's 10 countries, in the paper's order (France and Italy are not in the
WVS-7 data here; report them as missing, never substitute)."""


@dataclass(frozen=True)
class Country:
    """One surveyed country or territory."""

    iso2: str
    """ISO 3166-1 alpha-2 code ("US"); an ISO 3166-2 code for a non-ISO entity ("GB-NIR")."""
    iso3: str
    """ISO 3166-1 alpha-3 code ("USA"), or the WVS's own code for a non-ISO entity ("NIR")."""
    name: str
    """English short name."""
    income_group: str | None
    """World Bank income group per `INCOME_CLASSIFICATION`; None when it has none."""
    region: str
    """World Bank region (`REGION_SCHEME`)."""
    aliases: tuple[str, ...] = ()
    """Other spellings of the name used by the WVS, the World Bank, Pew or ISO."""


NON_ISO_CODES: Final[dict[str, Country | str]] = {
    # The WVS surveys Northern Ireland apart from Great Britain; ISO 3166-1 has no code for it.
    "NIR": Country(
        iso2="GB-NIR",
        iso3="NIR",
        name="Northern Ireland",
        income_group=None,
        region="Europe & Central Asia",
    ),
    # The WVS-7 codebook spells Morocco "MOR" in B_COUNTRY_ALPHA; its data files use ISO "MAR".
    "MOR": "MAR",
}
"""The only codes outside ISO 3166-1 this project accepts: each names its own entity (a
`Country`), or stands for the ISO3 code given (and is read as that country)."""


class UnknownCountry(KeyError):
    """A code or name that is not in the country table; the message lists close matches."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown country"


@lru_cache(maxsize=1)
def _table() -> dict[str, Country]:
    """ISO3 → Country for the CSV rows and the non-ISO table."""
    text = resources.files("cvs_evaluator").joinpath("countries.csv").read_text(encoding="utf-8")
    table: dict[str, Country] = {}
    for row in csv.DictReader(io.StringIO(text)):
        iso3 = row["iso3"].strip().upper()
        if iso3 in table or iso3 in NON_ISO_CODES:
            raise ValueError(f"countries.csv lists {iso3} twice")
        group = row["income_group"].strip() or None
        if group is not None and group not in INCOME_GROUPS:
            raise ValueError(f"countries.csv: {iso3} has unknown income group {group!r}")
        aliases = tuple(a.strip() for a in row["aliases"].split(";") if a.strip())
        table[iso3] = Country(
            iso2=row["iso2"].strip().upper(),
            iso3=iso3,
            name=row["name"].strip(),
            income_group=group,
            region=row["region"].strip(),
            aliases=aliases,
        )
    table.update({code: c for code, c in NON_ISO_CODES.items() if isinstance(c, Country)})
    return table


@lru_cache(maxsize=1)
def _by_code() -> dict[str, Country]:
    """Every accepted code (ISO3, ISO2, non-ISO codes) → Country."""
    table = _table()
    codes: dict[str, Country] = {}
    for entry in table.values():
        codes[entry.iso3] = entry
        codes[entry.iso2] = entry
    for code, meaning in NON_ISO_CODES.items():
        codes[code] = meaning if isinstance(meaning, Country) else table[meaning]
    return codes


@lru_cache(maxsize=1)
def _by_name() -> dict[str, Country]:
    """Lower-cased name or alias → Country."""
    names: dict[str, Country] = {}
    for entry in _table().values():
        for name in (entry.name, *entry.aliases):
            key = name.casefold()
            if key in names and names[key] is not entry:
                raise ValueError(f"country name {name!r} is ambiguous in countries.csv")
            names[key] = entry
    return names


def all_countries() -> list[Country]:
    """Every country in the table (ISO and non-ISO), by ISO3."""
    return [entry for _, entry in sorted(_table().items())]


def country(code: str) -> Country:
    """The country with ISO3, ISO2 or non-ISO code `code` (case-insensitive).

    Raises `UnknownCountry` listing close matches among codes and names.
    """
    key = code.strip().upper()
    found = _by_code().get(key)
    if found is not None:
        return found
    raise UnknownCountry(f"unknown country code {code!r}{_did_you_mean(key)}")


def country_by_name(name: str) -> Country:
    """The country an English name or known alias denotes ("Great Britain" → GBR)."""
    found = _by_name().get(name.strip().casefold())
    if found is not None:
        return found
    raise UnknownCountry(f"unknown country name {name!r}{_did_you_mean(name.strip())}")


def _did_you_mean(key: str) -> str:
    """ "; did you mean …?" with up to three close codes, else close names, else a pointer."""
    codes = list(_by_code())
    close = difflib.get_close_matches(key.upper(), codes, n=3, cutoff=0.6)
    if not close:
        names = {name: entry.name for name, entry in _by_name().items()}
        matches = difflib.get_close_matches(key.casefold(), names, n=3, cutoff=0.6)
        close = list(dict.fromkeys(names[m] for m in matches))
    if not close:
        return " (not in countries.csv or the non-ISO table)"
    return "; did you mean " + ", ".join(repr(c) for c in close) + "?"


def income_groups() -> dict[str, str | None]:
    """ISO3 → World Bank income group (None where the country has none)."""
    return {iso3: entry.income_group for iso3, entry in sorted(_table().items())}


def missing_study_countries(present: Iterable[str]) -> list[str]:
    """The study countries (ISO3, study order) absent from `present`."""
    have = set(present)
    return [code for code in STUDY_COUNTRIES if code not in have]
