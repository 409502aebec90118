"""The console's words in Chinese (default) and English. Templates call `t('key')`."""

from __future__ import annotations

STRINGS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "门卫室控制台", "login": "登录", "logout": "退出", "user": "用户名", "password": "密码",
        "login_failed": "用户名或密码不正确", "login_wait": "尝试次数过多，请 {s} 秒后再试",
        "alarms": "告警", "meters": "电表", "patrol": "巡更", "access": "门禁", "allocation": "公摊电费",
        "health": "系统状态", "history": "告警历史", "active_alarms": "未关闭的告警", "no_alarms": "没有未关闭的告警",
        "severity": "级别", "state": "状态", "message": "内容", "raised": "发生时间", "source": "来源",
        "ack": "确认", "ack_note": "处理说明", "acked_by": "确认人", "critical": "紧急", "warning": "警告",
        "info": "提示", "active": "未确认", "acknowledged": "已确认", "cleared": "已消除",
        "raised_ev": "发生", "updated_ev": "更新", "acknowledged_ev": "确认", "cleared_ev": "消除",
        "renotify_ev": "再次通知", "since": "起始日期", "filter": "筛选", "all": "全部", "rule": "规则",
        "what": "事件", "time": "时间", "forbidden": "您的角色无权进行此操作", "live": "实时",
        "offline_live": "连接中断，正在重连…", "new_critical": "新的紧急告警", "sound_on": "开启声音提示",
        "language": "English", "role_guard": "保安", "role_electrician": "电工", "role_accountant": "会计",
        "role_admin": "管理员", "not_found": "没有找到", "back": "返回", "acked_ok": "已确认",
        "csrf_failed": "表单已过期，请刷新页面后重试",
    },
    "en": {
        "title": "Guard-room console", "login": "Log in", "logout": "Log out", "user": "User name",
        "password": "Password", "login_failed": "Wrong user name or password",
        "login_wait": "Too many attempts: try again in {s} s",
        "alarms": "Alarms", "meters": "Meters", "patrol": "Patrol", "access": "Access", "allocation": "Allocation",
        "health": "Health", "history": "Alarm history", "active_alarms": "Open alarms", "no_alarms": "No open alarms",
        "severity": "Severity", "state": "State", "message": "Message", "raised": "Raised", "source": "Source",
        "ack": "Acknowledge", "ack_note": "Note", "acked_by": "Acknowledged by", "critical": "critical",
        "warning": "warning", "info": "info", "active": "active", "acknowledged": "acknowledged",
        "cleared": "cleared", "raised_ev": "raised", "updated_ev": "updated", "acknowledged_ev": "acknowledged",
        "cleared_ev": "cleared", "renotify_ev": "renotified", "since": "Since", "filter": "Filter", "all": "all",
        "rule": "Rule", "what": "Event", "time": "Time", "forbidden": "Your role may not do this", "live": "live",
        "offline_live": "Connection lost, reconnecting…", "new_critical": "New critical alarm",
        "sound_on": "Turn on sound", "language": "中文", "role_guard": "guard", "role_electrician": "electrician",
        "role_accountant": "accountant", "role_admin": "admin", "not_found": "Not found", "back": "Back",
        "acked_ok": "Acknowledged", "csrf_failed": "The form has expired: reload the page and try again",
    },
}


def translator(lang: str):
    table = STRINGS.get(lang, STRINGS["zh"])
    fallback = STRINGS["zh"]

    def t(key: str, **kw) -> str:
        text = table.get(key) or fallback.get(key) or key
        return text.format(**kw) if kw else text
    return t
