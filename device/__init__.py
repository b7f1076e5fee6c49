"""The appliance; see README."""
import models  # noqa: F401  (sets OpenCV's decode limit before any cv2 import)
