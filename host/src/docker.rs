//! Docker through bollard: images, networks and the containers of each colour.
