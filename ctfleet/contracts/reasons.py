"""Every reason code, in one namespace. Stable: clients, dashboards and tests match on them.

A reason says why an upload or a study ended REJECTED or FAILED (or why a
command refused its input); it never carries a header value.
"""

from __future__ import annotations


class Reason:
    """Reason codes recorded with REJECTED and FAILED. Stable: clients match on them."""

    EMPTY_UPLOAD = "empty_upload"
    MANIFEST_INVALID = "manifest_invalid"
    UPLOAD_INCOMPLETE = "upload_incomplete"  # never completed, or files missing at completion
    CHECKSUM_MISMATCH = "checksum_mismatch"  # a file's sha256 differs from the manifest
    NOT_DICOM = "not_dicom"
    NO_PIXEL_DATA = "no_pixel_data"
    NOT_CT = "not_ct"
    MULTIPLE_STUDIES = "multiple_studies"
    NO_USABLE_SERIES = "no_usable_series"
    UNKNOWN_FACILITY = "unknown_facility"
    # Geometry and pixel checks while building the volume.
    INCONSISTENT_SPACING = "inconsistent_spacing"  # slice gaps differ (a missing slice, mixed stacks)
    DUPLICATE_SLICES = "duplicate_slices"  # two instances at the same position along the normal
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # orientation, size or pixel spacing differ
    MISSING_GEOMETRY = "missing_geometry"  # position, orientation or pixel spacing absent
    UNSUPPORTED_PIXEL_DATA = "unsupported_pixel_data"  # multi-frame, colour, undecodable syntax
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # a syntax no installed decoder reads
    # Pixel safety: images that may show identity in their pixels.
    BURNED_IN_ANNOTATION = "burned_in_annotation"  # the header says so (BurnedInAnnotation YES)
    SECONDARY_CAPTURE = "secondary_capture"  # screenshots and other converted images
    DERIVED_IMAGE = "derived_image"  # screen saves and other derived pictures, not reconstructions
    BURNED_IN_TEXT = "burned_in_text"  # text found in the pixels although the header is silent
    OUTPUT_EXISTS = "output_exists"  # a command's output folder is not empty
    # Processing: recorded with FAILED, or answered by the API.
    ANALYSIS_FAILED = "analysis_failed"  # the analysis crashed on every attempt
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # SQS gave up on the job (dead-letter queue)
    INGEST_ERROR = "ingest_error"  # ingest crashed on every delivery of the upload
    DUPLICATE_JOB = "duplicate_job"  # a job whose study another attempt settled: dropped
    INPUT_MISSING = "input_missing"  # the study's de-identified objects are gone: it can never run
    MALFORMED_JOB = "malformed_job"  # a job message no worker can read: sent to the dead-letter queue
    BAD_REQUEST = "bad_request"  # an API request that is malformed
    BAD_FILE_NAME = "bad_file_name"  # a file name outside the safe set (control, bidi, backslash, too long)
    UPLOAD_TOO_LARGE = "upload_too_large"  # more files or bytes than one upload may declare
    TOO_MANY_OPEN_UPLOADS = "too_many_open_uploads"  # the facility has this many uploads not yet completed
    # Identity and access: answered by the API (401 for the token, 403 for the right), never recorded.
    NO_TOKEN = "no_token"  # no bearer token
    TOKEN_MALFORMED = "token_malformed"  # not a JWT, or a required claim missing
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"  # nbf or iat in the future (beyond the clock skew)
    WRONG_ISSUER = "wrong_issuer"  # not our user pool
    WRONG_AUDIENCE = "wrong_audience"  # not our app client
    WRONG_TOKEN_USE = "wrong_token_use"  # an ID or refresh token where an access token belongs
    BAD_SIGNATURE = "bad_signature"  # not signed by a key of the pool's JWKS
    ALG_NOT_ALLOWED = "alg_not_allowed"  # anything but RS256 (none, HS256 ...)
    NO_FACILITY = "no_facility"  # the token names no facility of this stack, or more than one
    ROLE_NOT_ALLOWED = "role_not_allowed"  # the token's role lacks the right for this route
    FACILITY_MISMATCH = "facility_mismatch"  # a request naming a facility other than the token's
    NOT_FOUND = "not_found"  # no such route, upload, study, object or resource
    # Errors of the services behind us (never recorded as a study's reason; they say how to retry).
    SERVICE_BUSY = "service_busy"  # throttling, 5xx, connection trouble: retried
    SERVICE_ERROR = "service_error"  # access denied, validation: a deployment or code fault
    CONFLICT = "conflict"  # a conditional write lost: someone else settled the record
    SPOT_INTERRUPTION = "spot_interruption"  # the instance is being reclaimed: work handed back
    # Intake and the deid/analyze commands.
    NO_INPUT = "no_input"  # a command's INPUT is missing, or neither a folder nor a NIfTI file
    NO_SECRET = "no_secret"  # the facility secret is empty or unreadable
    NOT_NIFTI = "not_nifti"  # a .nii/.nii.gz input nibabel cannot read
    BAD_SHAPE = "bad_shape"  # an input image that is not 3-D
    UNREADABLE = "unreadable"  # a file that could not be read from disk (counted as skipped)
    LOCALIZER = "localizer"  # a candidate stack passed over: ImageType LOCALIZER (a scout)
    MULTI_FRAME = "multi_frame"  # a candidate stack passed over: multi-frame images
    TOO_FEW_SLICES = "too_few_slices"  # a stack with too few slices to analyze (a scout, a short stack)
    NO_GEOMETRY = "no_geometry"  # a candidate stack passed over: a slice lacks position, orientation or spacing
    # Archives (ctfleet backfill, ctfleet deid).
    BAD_ARCHIVE = "bad_archive"  # a zip file, or a member of one, that cannot be read
    NO_SOP_UID = "no_sop_uid"  # an image without SOPInstanceUID or SOPClassUID, in the data set and the file meta
    NO_STUDY_UID = "no_study_uid"  # an image without StudyInstanceUID: it cannot be placed in a study
    DUPLICATE_SOP_CONFLICT = "duplicate_sop_conflict"  # a second file with a SOPInstanceUID seen, other content
    UPLOAD_FAILED = "upload_failed"  # the API or S3 kept failing for one study: retried, then given up
    # The model's own errors (model/ imports nothing of ours, so it writes these as strings;
    # tests/unit/test_reasons.py checks that every one it raises is listed here).
    BAD_SPACING = "bad_spacing"  # voxel spacing not finite and positive
    BAD_AFFINE = "bad_affine"  # the volume's affine is not a finite, invertible 4x4
    BAD_ORIENTATION = "bad_orientation"  # an oblique volume the analyzer cannot orient
    UNKNOWN_MODEL = "unknown_model"  # --model names no registered analyzer and no path
    BAD_MODEL_NAME = "bad_model_name"  # a model name unfit for S3 result prefixes
    BAD_MODEL_URI = "bad_model_uri"  # not s3://bucket/key, or no S3 client for one
    MODEL_NOT_FOUND = "model_not_found"  # the model's files are not where it says
    MODEL_ACCESS_DENIED = "model_access_denied"  # the model's S3 objects are not readable
    BAD_MODEL_CONFIG = "bad_model_config"  # model.json is malformed or inconsistent
    BAD_MODEL_WEIGHTS = "bad_model_weights"  # the weights file does not load in its declared format
    BAD_MODEL_OUTPUT = "bad_model_output"  # the network's output has the wrong shape or classes
    DEVICE_MISMATCH = "device_mismatch"  # an analyzer called on another device than it was loaded on
