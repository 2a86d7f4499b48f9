"""ARM ground sites: the known ones, and a site from its code or a mapping."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bzpipe.errors import ConfigError


class Site(BaseModel):
    """An ARM ground site with a vertically pointing cloud radar."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="ARM site code, lower case (nsa, oli, sgp, ...)")
    facility: str = Field(description="ARM facility code (C1, M1, ...)")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=360)
    elevation_m: float = Field(description="radar altitude above mean sea level, m")
    kazr_datastream: str = Field(description="KaZR datastream class without site/facility/level")
    kazr_level: str = "c0"

    def datastream(self, kind: str = "kazr", level: str | None = None) -> str:
        """Full ARM datastream name, e.g. ``nsaarsclkazr1kolliasC1.c0``."""
        if kind == "kazr":
            return f"{self.name}{self.kazr_datastream}{self.facility}.{level or self.kazr_level}"
        return f"{self.name}{kind}{self.facility}.{level or 'b1'}"


#: The sites of King et al. (2024): Utqiagvik (NSA C1) and Oliktok Point (OLI M1).
KNOWN_SITES: dict[str, Site] = {
    "nsa": Site(name="nsa", facility="C1", latitude=71.3230, longitude=-156.6090,
                elevation_m=8.0, kazr_datastream="arsclkazr1kollias"),
    "oli": Site(name="oli", facility="M1", latitude=70.4950, longitude=-149.8860,
                elevation_m=2.0, kazr_datastream="arsclkazr1kollias"),
    "sgp": Site(name="sgp", facility="C1", latitude=36.6050, longitude=-97.4850,
                elevation_m=318.0, kazr_datastream="kazrge", kazr_level="a1"),
}


def resolve_site(site: str | Site | dict[str, Any]) -> Site:
    """A :class:`Site` from its code (``"nsa"``), a dict, or a Site."""
    if isinstance(site, Site):
        return site
    if isinstance(site, dict):
        return Site.model_validate(site)
    try:
        return KNOWN_SITES[site.lower()]
    except KeyError:
        raise ConfigError(f"unknown site {site!r}; known: {sorted(KNOWN_SITES)} "
                          "(or give a full site mapping)") from None
