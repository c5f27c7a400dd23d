"""Clinical event sequences (EHR): ICU stays read from PhysioNet/CinC 2012 files or FHIR R4, cleaned by
stated rules (:mod:`.records`), and tokenised as EHRMamba does (:mod:`.tokens`)."""

from .fhir import read_fhir_folder, read_fhir_resources, stay_to_bundle, write_fhir_export
from .physionet2012 import PhysioNet2012, read_outcomes, read_set, read_stay_csv, summary_features
from .records import RANGES, SERIES_VARIABLES, STATIC_VARIABLES, Stay, clean_events, clean_statics
from .tokens import FEATURES, NUM_TOKEN_TYPES, EventTokenizer

__all__ = ["FEATURES", "NUM_TOKEN_TYPES", "RANGES", "SERIES_VARIABLES", "STATIC_VARIABLES", "EventTokenizer",
           "PhysioNet2012", "Stay", "clean_events", "clean_statics", "read_fhir_folder", "read_fhir_resources",
           "read_outcomes", "read_set", "read_stay_csv", "stay_to_bundle", "summary_features",
           "write_fhir_export"]
