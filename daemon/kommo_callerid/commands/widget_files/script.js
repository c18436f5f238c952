/* kommo-callerid click-to-call widget: a click on a phone number in Kommo rings the user's
 * own phone (the daemon knows which extension is theirs), then dials the number.
 * The request goes through $authorizedAjax, which adds Kommo's disposable token
 * (X-Auth-Token); the daemon checks it. The browser never names an extension. */
define(['jquery'], function ($) {
  'use strict';

  var MESSAGE_ID = 'kommo-callerid-message';

  return function () {
    var self = this;

    function t(key) {
      var messages = (self.i18n && self.i18n('messages')) || {};
      return messages[key] || key;
    }

    function server() {
      var settings = (self.get_settings && self.get_settings()) || {};
      return String(settings.server || '').replace(/\/+$/, '');
    }

    function say(text, failed) {
      var header = t('title');
      var app = window.APP;
      if (app && app.notifications && app.notifications.show_message) {
        app.notifications.show_message({ header: header, text: text });
        return;
      }
      var box = document.getElementById(MESSAGE_ID);
      if (!box) {
        box = document.createElement('div');
        box.id = MESSAGE_ID;
        box.setAttribute('role', 'status');
        box.style.cssText = 'position:fixed;right:16px;bottom:16px;max-width:360px;padding:12px 16px;' +
          'border-radius:6px;font:14px/1.4 sans-serif;color:#fff;box-shadow:0 2px 8px rgba(0,0,0,.3);z-index:99999';
        document.body.appendChild(box);
      }
      box.style.background = failed ? '#c0392b' : '#2d7d46';
      box.textContent = header + ': ' + text;
    }

    function failure(xhr) {
      var body = (xhr && xhr.responseJSON) || {};
      switch (xhr && xhr.status) {
        case 400: return t('bad_number');
        case 401: return t('not_signed');
        case 403: return body.error === 'disabled' ? t('disabled') : t('no_extension');
        case 429: return t('too_fast');
        case 502: return t('pbx_refused') + (body.detail ? ' (' + body.detail + ')' : '');
        case 503: return t('pbx_down');
        default: return t('unreachable');
      }
    }

    function call(phone) {
      if (!server()) {
        say(t('no_server'), true);
        return;
      }
      say(t('calling') + ' ' + phone, false);
      self.$authorizedAjax({
        url: server() + '/kommo/call',
        method: 'POST',
        type: 'POST',
        data: { phone: String(phone) }
      }).done(function (answer) {
        // 202: the PBX took the call and the user's phone rings (a quick failure is a 502).
        say(t('connected') + ' ' + ((answer && answer.number) || phone), false);
      }).fail(function (xhr) {
        say(failure(xhr), true);
      });
    }

    this.callbacks = {
      init: function () { return true; },
      bind_actions: function () { return true; },
      render: function () {
        self.add_action('phone', function (data) {
          call((data && (data.value || data.phone)) || '');
        });
        return true;
      },
      settings: function () { return true; },
      onSave: function () { return true; },
      destroy: function () { return true; }
    };
    return this;
  };
});
