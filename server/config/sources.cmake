# Sources of the model-config loader (server/config). Included by the lead's
# server CMakeLists; needs qs_proto and absl::status/statusor/strings.
set(QS_SERVER_CONFIG_SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_config_loader.cc)
