"""Identity and access: verified tokens, the caller they describe, and what each role may see.

``tokens``     Cognito access tokens verified with PyJWT against the pool's JWKS
``principal``  the caller (user, facility, role) from the claims, and the rights of each role
``views``      the fields of uploads and studies each role is shown
"""

from .principal import Principal, Right, Role, group_names
from .tokens import TokenVerifier, jwks_url
from .views import study_view, upload_view

__all__ = ["Principal", "Right", "Role", "TokenVerifier", "group_names", "jwks_url", "study_view", "upload_view"]
