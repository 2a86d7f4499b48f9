"""The numbers the synthetic KaZR / ERA-5 generator is built on, with their sources: ONE place.

Every constant the generator (:mod:`.atmosphere`, :mod:`.scene`, :mod:`.arm_files`,
:mod:`.era5_files`) takes from the literature is defined here with the source
key of ``docs/arctic_radar_climatology.md`` (the project's reference notes,
``../shared/docs``).  Constants marked *engineering choice* are not observations:
they are tuned so that the generated statistics land on the observed ones
listed beside them (checked in ``tests/test_synthetic.py`` and printed by
``benchmarks/bench_synthetic.py --realism``).

Source keys
-----------
[KZS]  ARM KaZR general-mode file ``sgpkazrgeC1.a1.20190529.000002.cdf`` (attributes and data).
[Sh11a] Shupe et al. 2011, JAMC 50:626, doi:10.1175/2010JAMC2467.1 (Arctic cloud occurrence).
[Sh11b] Shupe 2011, JAMC 50, doi:10.1175/2010JAMC2468.1 (cloud phase; liquid at Barrow).
[Si21] Silber et al. 2021, ACP 21:3949, doi:10.5194/acp-21-3949-2021 (supercooled layers precipitate).
[ZG08] Zhao & Garrett 2008, JGR, doi:10.1029/2007JD009222 (sublimation below cloud base at NSA).
[Ku16] Kulie et al. 2016, JHM 17:1261, doi:10.1175/JHM-D-15-0123.1 (shallow snowfall share).
[M14]  Maahn et al. 2014, JGR, doi:10.1002/2014JD022079 (polar Ze below 1.2 km).
[S23]  Schirmacher et al. 2023, AMT 16:4081 (CloudSat misses ~1/2 of precipitation in its blind zone).
[ACRC] Alaska Climate Research Center, Barrow monthly summaries (Dec 2010, Oct 2014, Feb 2015).
[HI]   "Arctic humidity inversions: climatology and processes", J. Climate 2018, and Nygard et al. 2014
       (humidity inversions in > 90 % of winter soundings; reanalyses underestimate their strength).
[G01]  Gerber et al. 2001, JAS 58:497 (cloud LWC spectral density ~ k^-5/3).
[HK05] Hogan & Kew 2005, QJRMS 131:2585 (fall streaks: a fractal field sheared by the wind).
[KING] King et al. 2024 reference code (thresholds, grid; ``docs/paper.md``).

Observed statistic                              value            source   how the generator meets it
----------------------------------------------  ---------------  -------  ------------------------------------
cloud occurrence, six Arctic sites (annual)     58-83 %, lowest  [Sh11a]  CLOUD_OCCURRENCE_TARGET (winter)
                                                in winter
liquid occurrence at Barrow                     56 %             [Sh11b]  low mixed-phase layers (LOW_CLOUD_*)
liquid-only clouds                              few above 3 km   [Sh11b]  LOW_CLOUD_TOP_M range
supercooled layers that precipitate             > 85 %           [Si21]   every low layer generates snow
shallow share of snowfall events                ~ 36 %           [Ku16]   low layers vs deep systems
sublimation below cloud base at NSA             "substantial"    [ZG08]   K_SUBLIMATION (virga)
median Ze between surface and 1.2 km (Ze > -5)  ~ constant       [M14]    growth only where ice-supersaturated
KaZR minimum detectable Ze at 1 km              ~ -50 dBZ        [KZS]    MDS_DBZ_AT_1KM (+ 20 log10 r)
horizontal spectrum of cloud fields             ~ k^-5/3         [G01]    TEXTURE_HURST = 1/3 (fractal sums)
fall streaks                                    sheared by wind  [HK05]   drift relative to the generating
                                                                          level
surface temperature, Feb normal at Barrow       -25.7 degC       [ACRC]   atmosphere._seasonal_mean_c
wind speed, monthly mean (peak)                 5-7 (22) m s-1   [ACRC]   atmosphere wind processes
humidity inversions in winter                   > 90 % of time   [HI]     moist boundary layer under drier air
reanalysis inversion strength                   underestimated   [HI]     ERA5_INVERSION_FACTOR
"""

from __future__ import annotations

# --------------------------------------------------------------------------- radar [KZS], [KING]

#: KaZR minimum detectable reflectivity at 1 km range (dBZ), rising as 20 log10(r) [KZS]
MDS_DBZ_AT_1KM = -50.0
#: speckle (fluctuation of a 4-s, 30-m KaZR estimate), dB; engineering choice, 20 spectral averages [KZS]
SPECKLE_DB = 0.7
#: reflectivity range and the no-echo value of the paper's normalization [KING]
NO_ECHO_DBZ = -60.0

# --------------------------------------------------------------------------- occurrence [Sh11a], [Sh11b]

#: fraction of winter time with any hydrometeor echo in the column; Arctic annual 58-83 %, lowest in
#: winter [Sh11a].  Engineering target for the sum of the regimes below (tests check 0.45-0.80).
CLOUD_OCCURRENCE_TARGET = 0.62
#: mid-level (snow-generating) systems: share of time present; engineering choice
MID_LAYER_OCCURRENCE = 0.42
#: low mixed-phase layers form where the boundary layer is supersaturated w.r.t. ice
#: (liquid-topped layers at Barrow, [Sh11b]; > 85 % precipitate [Si21]): RH_ice threshold
LOW_CLOUD_RH_ICE = 1.0
#: low-layer tops, m AGL (liquid-only clouds are rarely above 3 km [Sh11b]); engineering range
LOW_CLOUD_TOP_M = (400.0, 2400.0)
#: surface air temperature above which no low snow layer forms (degC); engineering choice
LOW_CLOUD_MAX_T_C = -2.0

# --------------------------------------------------------------------------- humidity [HI], [ZG08]

#: boundary-layer relative humidity w.r.t. ice: mean and standard deviation.  Winter Arctic boundary
#: layers sit near ice saturation with frequent supersaturation in liquid-topped layers [Sh11b], [HI];
#: engineering choice so that ~16 % of the time RH_ice > 1.06 (shallow snowfall) and ~25 % < 0.92 (virga)
RH_LOW_MEAN, RH_LOW_SD = 0.96, 0.10
#: subcloud (between the boundary layer and a mid-level cloud base) RH_ice: mean, sd; engineering choice
RH_SUB_MEAN, RH_SUB_SD = 0.88, 0.08

# --------------------------------------------------------------------------- microphysics [ZG08], [M14]

#: sublimation of falling snow below ice saturation: dB per km per unit RH_ice deficit, at -10 dBZ
#: (weaker echoes sublimate faster); substantial sublimation below cloud base at NSA [ZG08]
K_SUBLIMATION = 200.0
#: depositional growth of falling snow above ice saturation: dB per km per unit RH_ice excess;
#: Ze stays ~constant where RH_ice ~ 1 [M14] and grows inside ice-supersaturated layers
K_GROWTH = 150.0
#: snow and cirrus fall speeds, m s-1 (the streak slant is drift / fall speed [HK05])
SNOW_FALL_SPEED = 1.0
CIRRUS_FALL_SPEED = 0.6

# --------------------------------------------------------------------------- texture [G01], [HK05]

#: Hurst exponent of the fractal textures: structure function ~ lag^(2H), spectrum ~ k^-(2H+1) = k^-5/3
TEXTURE_HURST = 1.0 / 3.0
#: outer and inner time scales of the textures, s (8 octaves); engineering choice
TEXTURE_OUTER_S = 4.0 * 3600.0
TEXTURE_INNER_S = 60.0

# --------------------------------------------------------------------------- reanalysis errors [HI]

#: ERA-5 sees the surface inversion weaker than it is (reanalyses underestimate inversion strength [HI])
ERA5_INVERSION_FACTOR = 0.6
#: ERA-5 relative-humidity error (RH_ice fraction, sd) in the boundary and subcloud layers and its
#: correlation time, s; engineering choice (reanalysis humidity errors of a few percent [HI])
ERA5_RH_ERROR_SD = 0.04
ERA5_ERROR_TIME_S = 12.0 * 3600.0
#: ERA-5 temperature (K) and wind (m s-1) errors, sd; engineering choice
ERA5_T_ERROR_SD = 0.7
ERA5_WIND_ERROR_SD = 1.5
#: boundary-layer top error of ERA-5, m (sd); engineering choice
ERA5_BL_TOP_ERROR_SD = 120.0
